-- Hash kinds are Sluice's registry (relay.hashing), not the schema's: Sluice writes
-- every registered kind here at start (relay.store.kinds), so a new kind needs no
-- migration. What 0002 and 0006 held per kind now follows from this table: an entry's
-- kind must be registered, and its value must have that kind's length, because banks
-- load as binary COPY of decode(value, 'hex') into fixed-size rows (see 0006).
CREATE TABLE hash_kind (
    name       text PRIMARY KEY,
    hex_length integer NOT NULL CHECK (hex_length > 0)
);

-- The kinds already stored, at their commonest length.
INSERT INTO hash_kind (name, hex_length)
SELECT kind, mode() WITHIN GROUP (ORDER BY length(value))
FROM bank_entry GROUP BY kind HAVING mode() WITHIN GROUP (ORDER BY length(value)) > 0;

ALTER TABLE bank_entry DROP CONSTRAINT IF EXISTS bank_entry_kind_check;
ALTER TABLE bank_entry ADD CONSTRAINT bank_entry_kind_registered
    FOREIGN KEY (kind) REFERENCES hash_kind (name);

-- Hex stays a plain check; the length is checked per statement against hash_kind, in
-- one join over the rows written (a row trigger would cost seconds per million rows
-- of an import). NOT VALID: rows already there are not checked, as in 0006.
ALTER TABLE bank_entry DROP CONSTRAINT IF EXISTS bank_entry_value_is_hex;
ALTER TABLE bank_entry ADD CONSTRAINT bank_entry_value_is_hex
    CHECK (value ~ '^[0-9a-f]*$') NOT VALID;

CREATE FUNCTION bank_entry_length() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    bad record;
BEGIN
    SELECT n.kind, length(n.value) AS got, k.hex_length AS want INTO bad
    FROM new_rows n JOIN hash_kind k ON k.name = n.kind
    WHERE length(n.value) <> k.hex_length
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'new row for relation "bank_entry" violates check constraint '
            '"bank_entry_value_is_hex": a % hash has % hex digits, not %',
            bad.kind, bad.want, bad.got
            USING ERRCODE = 'check_violation', TABLE = 'bank_entry',
                  CONSTRAINT = 'bank_entry_value_is_hex';
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER bank_entry_length_inserted AFTER INSERT ON bank_entry
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION bank_entry_length();
CREATE TRIGGER bank_entry_length_updated AFTER UPDATE ON bank_entry
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION bank_entry_length();
