"""The benchmark of the identity service: `make bench` (or `python -m bench --help`).

Loads a workspace of N people in bulk (load.py), starts the server as a subprocess (server.py),
drives it from separate load-generator processes (driver.py), runs the same SQL as an Identify of
an existing person through pgbench beside it (floor.py), and writes a JSON file and a PNG chart
(report.py)."""
