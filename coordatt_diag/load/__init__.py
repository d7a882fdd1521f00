"""Layer 1, load: checkpoint formats and safe loading, input streams, device placement and the
memory pre-check. Imports only `coordatt_diag.results` and `coordatt_diag.errors` below it."""
