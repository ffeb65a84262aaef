-- Banks: named hash lists (see relay.bank). Every running Sluice keeps them in memory and
-- reloads a bank when a notification on channel `sluice_bank` names it.
CREATE TABLE bank (
    id           serial PRIMARY KEY,
    name         text NOT NULL UNIQUE,
    category     text NOT NULL,        -- csam, ncii, terrorism, unwanted…; rules match on it
    source       text,                 -- where the list came from (file, NGO, admin)
    confidential boolean NOT NULL DEFAULT true,  -- its hashes are not shown to peers
    created_at   timestamptz NOT NULL DEFAULT now(),
    changed_at   timestamptz NOT NULL DEFAULT now()  -- last change to the bank or its entries
);

CREATE TABLE bank_entry (
    id       bigserial PRIMARY KEY,
    bank_id  integer NOT NULL REFERENCES bank (id) ON DELETE CASCADE,
    kind     text NOT NULL CHECK (kind IN ('pdq', 'md5', 'sha256')),
    value    text NOT NULL,               -- lowercase hex, as relay.hashing normalises it
    note     text,
    added_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (bank_id, kind, value)
);

-- Change propagation lives in triggers so that every writer announces its changes: the
-- CLI, the admin API, and an admin in psql. They are per statement, so an import of
-- millions of rows sends one notification, not millions. PostgreSQL delivers
-- notifications at commit and drops duplicates within a transaction.
CREATE FUNCTION bank_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- A transition table exists only for the events that define it, hence the branches.
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        PERFORM pg_notify('sluice_bank', name) FROM (SELECT DISTINCT name FROM new_rows) n;
    END IF;
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        PERFORM pg_notify('sluice_bank', name) FROM (SELECT DISTINCT name FROM old_rows) o;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER bank_inserted AFTER INSERT ON bank
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION bank_notify();
CREATE TRIGGER bank_updated AFTER UPDATE ON bank
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION bank_notify();
CREATE TRIGGER bank_deleted AFTER DELETE ON bank
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION bank_notify();

-- An entry change touches its bank's changed_at; that update notifies (above). Entries of a
-- bank being deleted find no bank row left to touch; the bank's own trigger notifies.
CREATE FUNCTION bank_entry_touch() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        UPDATE bank SET changed_at = now();
        RETURN NULL;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        UPDATE bank SET changed_at = now() WHERE id IN (SELECT bank_id FROM new_rows);
    END IF;
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        UPDATE bank SET changed_at = now() WHERE id IN (SELECT bank_id FROM old_rows);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER bank_entry_inserted AFTER INSERT ON bank_entry
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION bank_entry_touch();
CREATE TRIGGER bank_entry_updated AFTER UPDATE ON bank_entry
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION bank_entry_touch();
CREATE TRIGGER bank_entry_deleted AFTER DELETE ON bank_entry
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION bank_entry_touch();
CREATE TRIGGER bank_entry_truncated AFTER TRUNCATE ON bank_entry
    FOR EACH STATEMENT EXECUTE FUNCTION bank_entry_touch();
