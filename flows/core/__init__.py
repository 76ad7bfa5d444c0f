"""The pure rules of toolflows: no Prefect, no network, unit-tested alone.

Detection (job id, status, outputs), templates, the polling schedule, errors,
definitions, redaction and URL safety live here; `flows/` strings them into
Prefect tasks.
"""
