"""Study presets: each module defines `STUDY` (an `experiments.spec.study.Study`).

  micro    the end-to-end path in seconds (tests)
  smoke    the whole study on a 2-core CPU in under 10 minutes (the README's first command)
  cpu      the h200 design at 1/16 the length: models that learn, the claims on a 2-core CPU
  h200     the default GPU study: 3 budgets spanning 10x, 20 runs on one H200 (~3 h, in pieces)
  h200_quick  h200's first budget alone (7 runs)
  h100     >= 12 runs on one H100 in about 30 minutes
  h100_3m  h100 plus the 3m model (16 runs, about 50 minutes; continues an h100 folder)
  pod      a multi-host example: one run at a time over all hosts of a pod
"""
