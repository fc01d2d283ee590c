-- Usage rows are written by the settlement, in the same transaction as the charge: they name
-- the provider that served the request, and why a charge is below the price of its units.
ALTER TABLE usage_logs ADD COLUMN provider TEXT;
ALTER TABLE usage_logs ADD COLUMN charge_capped TEXT;
