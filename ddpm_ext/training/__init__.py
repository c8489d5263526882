"""Training (Ho et al. 2020, Algorithm 1) with accelerate: `ddpm-ext train` and `training/train_ddpm.py`.

One job per module: [`flags`] the flags and their checks, [`setup`] what a run is built from, [`train`] the run's
phases and the loop, [`resume`] the resume policy, [`checkpoints`] the checkpoints on disk, [`run_lock`] one run
per output folder, [`outputs`] the pipeline, grids, card and push a run writes, and [`conditioning`] class labels
for classifier-free guidance.
"""
