"""TensorBoard writing: one run's logger (`logger.RunLogger`: scalars to TensorBoard and
metrics.csv, histograms, text, hparams) and what it stands on — batched histogram
statistics (`histograms`), event files written by one background thread with hand-framed
protobuf bytes (`events`), and their CRC-32C checksums (`crc32c`).

The hand-framed bytes are what makes logging every tensor at every step cheap (measured
15× against tensorboardX's writer); they stay in this package, tested by reading them back
with TensorBoard's own reader. Nothing outside imports more than `RunLogger`,
`log_histograms` and the parameters' tags (`tags.ParameterTags`: `weights/0.Linear.weight`).
"""
from __future__ import annotations
