-- People (issue 14): accounts with a role, their API tokens, and the audit log of what
-- people did through the admin door and the CLI (relay/people/).
--
-- ``account``: a person who may use the admin door. The password is an argon2id hash
-- (argon2-cffi's encoded form, parameters included); a disabled account can neither
-- log in nor use its tokens.
CREATE TABLE account (
    id            bigserial PRIMARY KEY,
    name          text NOT NULL UNIQUE,
    role          text NOT NULL CHECK (role IN ('admin', 'moderator')),
    password_hash text NOT NULL,
    disabled      boolean NOT NULL DEFAULT false,
    created_at    timestamptz NOT NULL DEFAULT now()
);

-- A per-person bearer token for the JSON API: shown once, kept as its SHA-256 (a token
-- is random and long, so a slow hash adds nothing), revoked rather than deleted.
CREATE TABLE api_token (
    id           bigserial PRIMARY KEY,
    account_id   bigint NOT NULL REFERENCES account (id) ON DELETE CASCADE,
    digest       bytea NOT NULL UNIQUE,
    label        text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    revoked_at   timestamptz
);
CREATE INDEX api_token_account ON api_token (account_id);

-- Who did what, when and why. ``who`` is the account's name as it was (or
-- "shared-token", or "cli:USER"), kept as text so the record outlives the account.
CREATE TABLE audit_log (
    id     bigserial PRIMARY KEY,
    at     timestamptz NOT NULL DEFAULT now(),
    who    text NOT NULL,
    action text NOT NULL,
    why    text,
    detail jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX audit_log_newest ON audit_log (at DESC, id DESC);
CREATE INDEX audit_log_who ON audit_log (who, at DESC);
