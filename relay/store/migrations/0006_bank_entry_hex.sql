-- Banks are loaded as binary COPY of decode(value, 'hex') into fixed-size rows: one entry
-- that is not lowercase hex of its kind's length would stop every bank update (the load
-- fails and is retried). relay.bank validates what it adds; this holds an admin's psql
-- to the same. NOT VALID: rows already there are not checked (nor refused at upgrade).
ALTER TABLE bank_entry ADD CONSTRAINT bank_entry_value_is_hex CHECK (
    value ~ '^[0-9a-f]*$' AND length(value) = CASE kind WHEN 'md5' THEN 32 ELSE 64 END
) NOT VALID;
