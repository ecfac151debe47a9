"""A run's report: retrieval curves, training curves, bit balance and a gallery, as one page.

  python -m ucsh_jax.report --workdir=runs/digits [--compare=DIR,...]

writes `WORKDIR/report/index.html` with its PNGs (`build.write_report`).
"""
