-- Accounts, keys, cards, the ledger, holds, free-tier counters and usage logs.
-- Times are Unix milliseconds; money is integer credits.
CREATE TABLE accounts (
    id TEXT PRIMARY KEY,
    email TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    has_billing_method BOOLEAN NOT NULL DEFAULT FALSE,
    has_paid BOOLEAN NOT NULL DEFAULT FALSE,
    suspended BOOLEAN NOT NULL DEFAULT FALSE,
    bonus_granted BOOLEAN NOT NULL DEFAULT FALSE,
    balance BIGINT NOT NULL DEFAULT 0,
    held BIGINT NOT NULL DEFAULT 0 CHECK (held >= 0),
    created_at BIGINT NOT NULL
);

CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts(id),
    prefix TEXT NOT NULL UNIQUE,
    hash TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    disabled BOOLEAN NOT NULL DEFAULT FALSE,
    deleted_at BIGINT,
    scopes TEXT,
    limit_retention TEXT,
    limit_threshold BIGINT,
    limit_period_start BIGINT NOT NULL DEFAULT 0,
    limit_spent BIGINT NOT NULL DEFAULT 0,
    held BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    last_used_at BIGINT
);
CREATE INDEX api_keys_account ON api_keys(account_id);

CREATE TABLE cards (
    id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts(id),
    fingerprint TEXT NOT NULL,
    brand TEXT NOT NULL,
    last4 TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    deleted_at BIGINT
);
CREATE INDEX cards_account ON cards(account_id);

-- One row per card fingerprint that has received the billing-method grant.
CREATE TABLE card_grants (
    fingerprint TEXT PRIMARY KEY,
    account_id TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE ledger (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    account_id TEXT NOT NULL REFERENCES accounts(id),
    direction TEXT NOT NULL CHECK (direction IN ('TOPUP', 'CHARGE')),
    type TEXT NOT NULL,
    amount BIGINT NOT NULL CHECK (amount > 0),
    model TEXT,
    reference_id TEXT,
    description TEXT,
    idempotency_key TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL
);
CREATE INDEX ledger_account ON ledger(account_id, id);

-- Live holds only: a row lives for one request, so the table stays as small as the number
-- of requests in flight. One B-tree (no rowid, no secondary index) keeps each hold and
-- settlement to the fewest page writes; the lease sweeper's scan of it is cheap.
CREATE TABLE holds (
    id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL,
    key_id TEXT NOT NULL,
    key_limited BOOLEAN NOT NULL,
    node_id TEXT NOT NULL,
    amount BIGINT NOT NULL CHECK (amount >= 0),
    created_at BIGINT NOT NULL,
    lease_until BIGINT NOT NULL
) WITHOUT ROWID;

CREATE TABLE free_requests (
    account_id TEXT NOT NULL,
    at BIGINT NOT NULL
);
CREATE INDEX free_requests_account ON free_requests(account_id, at);

CREATE TABLE usage_logs (
    inference_id TEXT PRIMARY KEY,
    request_id TEXT NOT NULL,
    client_request_id TEXT,
    account_id TEXT NOT NULL,
    key_id TEXT NOT NULL,
    model TEXT NOT NULL,
    status TEXT NOT NULL,
    origin TEXT NOT NULL,
    error_code TEXT,
    prompt_tokens BIGINT NOT NULL,
    completion_tokens BIGINT NOT NULL,
    cached_tokens BIGINT NOT NULL,
    credits BIGINT NOT NULL,
    stream BOOLEAN NOT NULL,
    duration_ms BIGINT NOT NULL,
    ttft_ms BIGINT,
    created_at BIGINT NOT NULL
);
CREATE INDEX usage_logs_account ON usage_logs(account_id, created_at);
CREATE INDEX usage_logs_key ON usage_logs(key_id, created_at);
