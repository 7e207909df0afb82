"""Study presets: each module defines `STUDY` (an `experiments.spec.study.Study`).

  micro    the end-to-end path in seconds (tests)
  smoke    the whole study on a 2-core CPU in under 10 minutes (the README's first command)
  h100     >= 12 runs on one H100 in about 30 minutes
  h100_3m  h100 plus the 3m model (16 runs, about 50 minutes; continues an h100 folder)
  pod      a multi-host example: one run at a time over all hosts of a pod
"""
