-- Usage rows keyed by their inference id alone (WITHOUT ROWID): every settlement writes one,
-- and one B-tree fewer to update is one page fewer in each commit. Inference ids begin with
-- their time, so new rows go at the right edge of the key's B-tree.
CREATE TABLE usage_logs_next (
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
    created_at BIGINT NOT NULL,
    provider TEXT,
    charge_capped TEXT
) WITHOUT ROWID;
INSERT INTO usage_logs_next SELECT inference_id, request_id, client_request_id, account_id, key_id, model, status, origin,
    error_code, prompt_tokens, completion_tokens, cached_tokens, credits, stream, duration_ms, ttft_ms, created_at, provider, charge_capped
    FROM usage_logs;
DROP TABLE usage_logs;
ALTER TABLE usage_logs_next RENAME TO usage_logs;
CREATE INDEX usage_logs_account ON usage_logs(account_id, created_at);
CREATE INDEX usage_logs_key ON usage_logs(key_id, created_at);
