-- The ledger without AUTOINCREMENT: every append also rewrote `sqlite_sequence`, one more page
-- in every settlement's commit. The ledger is append-only (rows are never deleted), so a plain
-- INTEGER PRIMARY KEY gives the same ever-growing ids.
CREATE TABLE ledger_next (
    id INTEGER PRIMARY KEY,
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
INSERT INTO ledger_next (id, account_id, direction, type, amount, model, reference_id, description, idempotency_key, created_at)
    SELECT id, account_id, direction, type, amount, model, reference_id, description, idempotency_key, created_at FROM ledger;
DROP TABLE ledger;
ALTER TABLE ledger_next RENAME TO ledger;
CREATE INDEX ledger_account ON ledger(account_id, id);
DELETE FROM sqlite_sequence WHERE name = 'ledger';
