"""Reporting: what a run's files say, for people.

`report` (the HTML report of one run: `iterations` reads the run, `figures` and
`page` draw and write it), `table` (the paper-style table of runs),
`results_doc` (docs/results.md over several seeds), `plots` (the shared matplotlib
set-up) and `paper_numbers` (the published results the table compares with). They read
the files the stages wrote; no stage imports them.
"""
