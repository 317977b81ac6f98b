"""evol-ray: Evol-Instruct (WizardLM, arXiv 2304.12244) on Ray Data with vLLM engine actors.

Layout: `config` and `columns` (declared once), `stage` (a Ray Data stage's settings, stated
once), `engine/` (the model seam), `evolve/` (the chain and its rules), `checks/` (quality and
dedup), `io/` (storage, seeds, output layout, commit protocol), `pipeline/` (the driver),
`analysis/` (score, report). The command line is `cli`.
"""
