"""Training (Ho et al. 2020, Algorithm 1) with accelerate: the script's logic ([`train`]) and its checkpoints."""
