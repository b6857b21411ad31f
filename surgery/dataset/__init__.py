"""Dataset mode: explain every image of a folder, pool the raw values, suggest one threshold.

`python -m surgery calibrate FOLDER --labels "..." --out DIR` (`command`) resolves the options once
(`settings`), skips images whose folder already holds outputs for the same options hash, explains the
rest with one per-image function (`single`) on one of three runners (`runners`: serial, local processes,
Ray Data), then pools every image's raw values into `DIR/summary.json` (`summary`) and draws
`DIR/report.html` from it (`report`).
"""
