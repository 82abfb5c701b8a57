"""Worker of tests/unit/test_distributed.py (not a test): a few DMD2 steps with the GAN head on the testbed, as one
process or one rank of a torchrun job; prints each step's losses (the mean over the ranks) as JSON lines.

    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/unit/dist_gan_worker.py ddp|fsdp STEPS
"""

import json
import sys

import torch

from comfyui_tempo.testbed import distill, trained
from comfyui_tempo.training import distributed
from comfyui_tempo.training import dmd as dmd_training


def main(strategy: str, steps: int) -> None:
    torch.set_num_threads(1)
    d = distributed.init("cpu")
    tb = trained.load()
    cfg = dmd_training.DMDConfig(
        model_type="eps",
        real_guidance_scale=5.0,
        dfake_gen_update_ratio=2,
        batch_size=4,
        generator_lr=2e-4,
        fake_lr=2e-4,
        warmup_steps=2,
        seed=0,
        gen_cls_loss_weight=1e-2,
        guidance_cls_loss_weight=1e-2,
        gan_feature_module="net.mid.2",
    )
    torch.manual_seed(0)
    gen = distill.TestbedDenoiser(dmd_training.copy_teacher(tb.net), tb.sigmas)
    fake = distill.TestbedDenoiser(dmd_training.copy_teacher(tb.net), tb.sigmas)
    real = torch.randn(32, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    tr = dmd_training.DMDTrainer(
        tb.denoiser,
        gen,
        fake,
        tb.latent_shape,
        cfg,
        conditioning=list(range(10)),
        uncond=10,
        real_data=real,
        real_cond_index=torch.arange(32) % 10,
    )
    distributed.wrap(tr, d, strategy)
    for _ in range(steps):
        out = tr.step()
        if d.main:
            print(json.dumps({k: v for k, v in out.items() if k.startswith("loss")}), flush=True)
    d.close()
    distributed.exit_job(d, 0)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
