"""The report stage (DESIGN §8): `tables` (seed aggregation, leaderboard, verdicts), `plots`
(matplotlib figures made from the tidy tables only) and `html` (the static, offline report).

Submodules are imported explicitly (`from benchmark.report.html import build_report`) so that
importing the tables does not pull in matplotlib."""
