-- Removed bank entries, so that a running Sluice can apply a change to a bank of millions
-- of hashes without reading the bank again: it reads the entries added since the highest
-- entry id it has, and the removals since the highest removal id it has.
CREATE TABLE bank_entry_removal (
    id         bigserial PRIMARY KEY,
    bank_id    integer NOT NULL,          -- no foreign key: the bank may be gone too
    entry_id   bigint NOT NULL,
    kind       text NOT NULL,
    value      text NOT NULL,
    removed_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX bank_entry_removal_bank ON bank_entry_removal (bank_id, id);
CREATE INDEX bank_entry_bank_id ON bank_entry (bank_id, id);

CREATE FUNCTION bank_entry_log_removal() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO bank_entry_removal (bank_id, entry_id, kind, value)
        SELECT bank_id, id, kind, value FROM old_rows;
    RETURN NULL;
END
$$;

CREATE TRIGGER bank_entry_removal_logged AFTER DELETE ON bank_entry
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT
    EXECUTE FUNCTION bank_entry_log_removal();
