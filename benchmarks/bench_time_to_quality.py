"""Time to an image: `ddpm-ext sample`'s default sampler vs diffusers' `DDPMPipeline` default (1000 steps), same model.

    python benchmarks/bench_time_to_quality.py outputs/mnist [--batch_size 16] [--rounds 3] [--threads 2]

diffusers' `DDPMPipeline.from_pretrained` loads the same folder (ddpm_ext saves diffusers' layout), so both
pipelines run the same UNet weights on the same batch size, alternating in every round (`_common.alternate`), in
one process. ddpm_ext's side is what `ddpm-ext sample` draws by default: the pipeline's saved scheduler with
`ddpm_ext.commands.sample.DEFAULT_STEPS` steps and the pipeline's sampling defaults. That this default is of
DDPM-1000 quality is the sampler study's finding (docs/results/samplers.md), not this script's: this script times.
"""

from __future__ import annotations

import argparse

from _common import add_common_args, alternate, generator, machine_line, median, rounds, setup
from diffusers import DDPMPipeline

# ddpm_ext after _common, which puts the repository root on sys.path (first-party imports sort last)
from ddpm_ext import DDPMExtPipeline
from ddpm_ext.commands.sample import DEFAULT_STEPS


def main(argv: list[str] | None = None) -> None:
    p = add_common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    p.add_argument("pipeline", help="A pipeline folder saved by ddpm_ext (e.g. outputs/mnist).")
    p.add_argument("--batch_size", type=int, default=16, help="Images per call (default: 16).")
    p.add_argument("--steps", type=int, default=None, help="ddpm_ext's steps (default: `ddpm-ext sample`'s default).")
    args = p.parse_args(argv)
    device = setup(args)
    ours = DDPMExtPipeline.from_pretrained(args.pipeline).to(device)
    theirs = DDPMPipeline.from_pretrained(args.pipeline).to(device)
    for pipe in (ours, theirs):
        pipe.set_progress_bar_config(disable=True)
    T = theirs.scheduler.config.num_train_timesteps
    steps = min(args.steps or DEFAULT_STEPS, T)
    n = args.batch_size
    fns = {
        f"diffusers DDPMPipeline, {T} steps (its default)": lambda: theirs(batch_size=n, generator=generator(device, 0),
                                                                          num_inference_steps=T, output_type="np"),
        f"ddpm_ext default: {type(ours.scheduler).__name__}, {steps} steps": lambda: ours(
            batch_size=n, generator=generator(device, 0), num_inference_steps=steps, output_type="np"),
    }
    times = alternate(fns, rounds(args, full=3, quick=1), device, warmup=0 if args.quick else 1)
    (base_name, base), (our_name, our) = [(k, median(v)) for k, v in times.items()]
    print(f"{machine_line(device)}; batch {n}; {args.pipeline}\n")
    print("| sampler | seconds per image (median) | time relative to diffusers' default |")
    print("|---|---|---|")
    for name, t in ((base_name, base), (our_name, our)):
        print(f"| {name} | {t / n:.3f} | {t / base:.3f}× |")
    print(f"\nddpm_ext's default draws an image {base / our:.1f}× faster.")


if __name__ == "__main__":
    main()
