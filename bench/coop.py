"""`comfyui-tempo bench coop`: Coop-Diffusion bridges, resolution hand-off, fusion, time-decoupled.

Cases (rows share the columns case, method, nfe, vae_calls, psnr_db, noise_std_ratio,
noise_lag1_corr, wall_s, plus case-specific ones):

* ``noise_white``: the noise a model sees after the Sub-Module 2 noisy bridge (2x resolution) vs
  a bilinear latent upscale of the same noisy latent: per-channel std ratio (worst channel in
  ``std_worst``) and neighbour (lag-1) correlation. Testbed (real samples at timestep 500) and
  TAESD (photos) when its weights are present.
* ``resolution``: 32 px -> 64 px on testbed-hr (one model at both sizes, CFG), decoded PSNR
  against a full 64 px reference from coupled noise (64 px white noise whose 2x2 block means x 2
  are the 32 px noise). The three routes ComfyUI users take today, each swept over its setting
  (the best is marked ``best``), and ours (low res to the switch, noisy bridge, high res
  continues; at the resolution-aware level, the default, and at the paper's equal-SNR level).
  nfe = nfe_lr + nfe_hr; ``hr_equiv`` counts a 32 px call as 1/4 of a 64 px call.
  ``lr_upscaled`` is the 32 px final image upscaled (composition agreement). ``detail_ratio``:
  high-frequency energy over the reference's (unpaired; blur shows below 1).
* ``resolution_split``: the routes at the same split of one schedule (k low-res steps, n - k
  high-res steps: equal NFE and equal cost), for several k; ours switches at sigma_{k-1}.
* ``cross_space``: real TAESD pairs on scikit-image photos: taesd -> taesdxl bridged image vs a
  decode-encode-decode round trip, taesd -> taesd3 (4 -> 16 channels).
* ``coop_fusion``: Algorithm 1 (``coop_sample_euler``) of the testbed (AE1, 32 px) as A and
  testbed-hr (AE2) as B, at B 32 px and 64 px, d in {0, .25, .5, .75, 1}: decoded distance
  (PSNR) of A's result to A alone and to B alone, NFE and VAE calls per step; the cheap bridge VAE
  (``LinearVAE``, least squares per patch, in place of both autoencoders inside the loop): PSNR
  against the same run with the real autoencoders, and the wall time.
* ``time_decoupled``: testbed (structure, 32 px) -> testbed-hr (texture, 64 px) at timestep 500
  against each model alone; the same model on both sides against plain sampling (bit identity).
"""

from __future__ import annotations

import platform
import time

import torch
import torch.nn.functional as F

from ..bridges import core, decoupled, fusion
from ..samplers import kdiff, schedules
from ..testbed import vaes
from . import routes
from .common import print_table, psnr_db, write_json

COLUMNS = [
    "case",
    "method",
    "nfe",
    "nfe_lr",
    "nfe_hr",
    "hr_equiv",
    "vae_calls",
    "psnr_db",
    "psnr_min",
    "detail_ratio",
    "noise_std_ratio",
    "noise_lag1_corr",
    "identical",
    "wall_s",
    "setting",
]


def lag1_corr(r: torch.Tensor) -> float:
    """Mean of the horizontal and vertical neighbour correlations of a residual [B, C, H, W]."""
    r = r - r.mean(dim=(-2, -1), keepdim=True)
    ch = (r[..., :, 1:] * r[..., :, :-1]).mean() / (r * r).mean()
    cv = (r[..., 1:, :] * r[..., :-1, :]).mean() / (r * r).mean()
    return float((ch + cv) / 2)


def _noise_stats(resid: torch.Tensor) -> dict:
    per_ch = resid.std(dim=(0, 2, 3))
    return {
        "noise_std_ratio": float(per_ch.mean()),
        "std_worst": float((per_ch - 1).abs().max()),
        "noise_lag1_corr": lag1_corr(resid),
    }


def _psnr_cols(images, reference) -> dict:
    p = psnr_db(images, reference)
    return {"psnr_db": float(p.mean()), "psnr_min": float(p.min())}


def detail_energy(images: torch.Tensor) -> torch.Tensor:
    """Mean squared 4-neighbour Laplacian of images [B, C, H, W]: the high-frequency energy
    (blur lowers it; a hand-off that loses detail shows below the reference's)."""
    x = images.float()
    lap = 4 * x[..., 1:-1, 1:-1] - x[..., :-2, 1:-1] - x[..., 2:, 1:-1] - x[..., 1:-1, :-2] - x[..., 1:-1, 2:]
    return lap.pow(2).mean()


def _image_cols(images, reference) -> dict:
    """Paired PSNR to the reference and, unpaired, detail_ratio: the high-frequency energy of the
    images over the reference's (1 = as detailed as the full high-res runs)."""
    return {**_psnr_cols(images, reference), "detail_ratio": float(detail_energy(images) / detail_energy(reference))}


def _upsample_img(img, size=64):
    return core.resize_images(img, (size, size), "bicubic")


class Setup:
    """The two testbed models with their VAEs, the batch (classes x seeds) and CFG."""

    def __init__(self, classes: int, seeds: int, cfg: float, steps: int, scheduler: str = "karras"):
        from ..testbed import trained

        self.tb1 = trained.load()
        self.tbh = trained.load(name="hr")
        self.v1 = vaes.TestbedVAE(self.tb1, "testbed")
        self.v2 = vaes.TestbedVAE(self.tbh, "testbed-hr")
        self.sched = core.ModelSchedule.sd_discrete(name="sd")
        self.cond = torch.tensor([c for _ in range(seeds) for c in range(classes)])
        self.seeds = [s for s in range(seeds) for _ in range(classes)]
        self.cfg, self.steps, self.scheduler = cfg, steps, scheduler
        self.extra = {"cond": self.cond}
        self.den1 = self.tb1.cfg_denoiser(cfg)
        self.denh = self.tbh.cfg_denoiser(cfg)

    def sigmas_fn(self, n: int) -> torch.Tensor:
        return schedules.get_sigmas(self.scheduler, n)

    def coupled(self, lr_hw=8):
        """Per-image seeded coupled noise: (hr [B,4,2h,2w], lr [B,4,h,w])."""
        hr, lr = zip(
            *(
                routes.coupled_noise((1, 4, lr_hw, lr_hw), seed=1000 + s * 10 + int(c))
                for s, c in zip(self.seeds, self.cond.tolist())
            )
        )
        return torch.cat(hr), torch.cat(lr)


# ---------------------------------------------------------------------------------------------
# Cases


@torch.no_grad()
def case_noise_white(st: Setup, taesd_dir, log=print) -> list[dict]:
    rows = []
    sig = st.sigmas_fn(st.steps)
    s_sw = decoupled.switch_to_sigma(st.sched, 500)
    k = decoupled.split_at_switch(sig, s_sw)
    _, noise = st.coupled()
    x = kdiff.sample_euler(st.den1, noise * sig[0], sig[: k + 1], extra_args=st.extra)
    sk = sig[k]
    t0 = time.perf_counter()
    nb = core.bridge_noisy(
        x,
        sk,
        st.den1,
        st.v1,
        st.v1,
        st.sched,
        st.sched,
        size=(64, 64),
        filter="bicubic",
        generator=torch.Generator().manual_seed(5),
        extra_args=st.extra,
    )
    wall = time.perf_counter() - t0
    resid = (nb.x - nb.x0) / nb.sigma.view(-1, 1, 1, 1)
    rows.append(
        {
            "case": "noise_white",
            "method": "noisy_bridge (testbed)",
            "model": "testbed",
            "nfe": 1,
            "vae_calls": 2,
            "wall_s": wall,
            "setting": f"t=500 sigma={float(sk):.3f} 32->64px",
            **_noise_stats(resid),
        }
    )
    r_up = routes.upscale_latent((x - nb.x0_source) / sk)
    rows.append(
        {
            "case": "noise_white",
            "method": "latent_upscale_bilinear (testbed)",
            "model": "testbed",
            "nfe": 0,
            "vae_calls": 0,
            "wall_s": 0.0,
            "setting": "x2 bilinear of the same noisy latent",
            **_noise_stats(r_up),
        }
    )
    if taesd_dir is None:
        rows.append(
            {
                "case": "noise_white",
                "method": "noisy_bridge",
                "model": "taesd",
                "setting": "skipped",
                "note": "TAESD weights not found",
            }
        )
        return rows
    from ..testbed.vaes import TAESD

    vae = TAESD.load("taesd", taesd_dir)
    photos = sample_photos(128)
    z0 = vae.encode_model(photos)
    sk = float(st.sched.table[500])
    xb = z0 + sk * torch.randn(z0.shape, generator=torch.Generator().manual_seed(3))
    oracle = lambda xx, s, **_: z0  # noqa: E731 - the exact x0 (isolates the bridge from a model)
    t0 = time.perf_counter()
    nb = core.bridge_noisy(
        xb, sk, oracle, vae, vae, st.sched, st.sched, size=(256, 256), generator=torch.Generator().manual_seed(4)
    )
    wall = time.perf_counter() - t0
    rows.append(
        {
            "case": "noise_white",
            "method": "noisy_bridge (taesd)",
            "model": "taesd",
            "nfe": 0,
            "vae_calls": 2,
            "wall_s": wall,
            "setting": "t=500 oracle x0, 128->256px",
            **_noise_stats((nb.x - nb.x0) / nb.sigma.view(-1, 1, 1, 1)),
        }
    )
    rows.append(
        {
            "case": "noise_white",
            "method": "latent_upscale_bilinear (taesd)",
            "model": "taesd",
            "nfe": 0,
            "vae_calls": 0,
            "wall_s": 0.0,
            "setting": "x2 bilinear",
            **_noise_stats(routes.upscale_latent((xb - z0) / sk)),
        }
    )
    return rows


def sample_photos(size: int = 128) -> torch.Tensor:
    """scikit-image's bundled photos, centre-cropped and resized to size x size (0..1)."""
    import kornia
    from skimage import data

    out = []
    for name in ("astronaut", "coffee", "rocket", "chelsea"):
        a = getattr(data, name)()
        t = torch.from_numpy(a).permute(2, 0, 1)[None].float() / 255
        h, w = t.shape[-2:]
        m = min(h, w)
        t = t[..., (h - m) // 2 : (h - m) // 2 + m, (w - m) // 2 : (w - m) // 2 + m]
        out.append(kornia.geometry.transform.resize(t, (size, size), antialias=True).clamp(0, 1))
    return torch.cat(out)


@torch.no_grad()
def case_resolution(st: Setup, quick: bool, log=print) -> list[dict]:
    n = st.steps
    sig = st.sigmas_fn(n)
    noise_hr, noise_lr = st.coupled()
    dec = st.v2.decode_model

    def timed_route(fn, *a, **kw):
        t0 = time.perf_counter()
        r = fn(*a, **kw)
        return r, time.perf_counter() - t0

    ref, wall_ref = timed_route(routes.route_reference, st.denh, noise_hr, sig, st.extra)
    img_ref = dec(ref.x)
    rows = [
        {
            "case": "resolution",
            "method": "reference_hr",
            "nfe": ref.nfe,
            "nfe_lr": 0,
            "nfe_hr": ref.nfe_hr,
            "hr_equiv": ref.hr_equiv(),
            "vae_calls": 0,
            "psnr_db": float("inf"),
            "wall_s": wall_ref,
            "setting": f"64px from coupled noise, euler {st.scheduler} {n}, cfg {st.cfg}",
        }
    ]
    # composition agreement: the low-res run alone, upscaled
    z_lr = kdiff.sample_euler(st.denh, noise_lr * sig[0], sig, extra_args=st.extra)
    rows.append(
        {
            "case": "resolution",
            "method": "lr_upscaled",
            "nfe": n,
            "nfe_lr": n,
            "nfe_hr": 0,
            "hr_equiv": n / 4,
            "vae_calls": 1,
            **_image_cols(_upsample_img(dec(z_lr)), img_ref),
            "setting": "32px final, decoded, bicubic x2 (composition agreement)",
        }
    )

    # the floor for anything that knows only the low-res noise: the full 64 px run from other 64 px
    # noise with the same 2x2 block means (so the same 32 px noise)
    w = torch.randn(noise_hr.shape, generator=torch.Generator().manual_seed(77))
    w = w - F.interpolate(F.avg_pool2d(w, 2), scale_factor=2, mode="nearest")
    noise_alt = F.interpolate(F.avg_pool2d(noise_hr, 2), scale_factor=2, mode="nearest") + w
    alt = routes.route_reference(st.denh, noise_alt, sig, st.extra)
    rows.append(
        {
            "case": "resolution",
            "method": "hr_same_lr_noise",
            "nfe": n,
            "nfe_lr": 0,
            "nfe_hr": n,
            "hr_equiv": float(n),
            "vae_calls": 0,
            **_image_cols(dec(alt.x), img_ref),
            "setting": "64px from other noise with the same 2x2 block means (floor for the 32px noise alone)",
        }
    )

    def add(route, method, r, wall, setting):
        row = {
            "case": "resolution",
            "method": method,
            "route": route,
            "nfe": r.nfe,
            "nfe_lr": r.nfe_lr,
            "nfe_hr": r.nfe_hr,
            "hr_equiv": r.hr_equiv(),
            "vae_calls": r.vae_calls,
            **_image_cols(dec(r.x), img_ref),
            "wall_s": wall,
            "setting": setting,
        }
        rows.append(row)
        log(f"  {method:28s} {setting:36s} nfe {r.nfe:3d} ({r.nfe_lr}+{r.nfe_hr})  {row['psnr_db']:.2f} dB")
        return row

    # every route at the same total NFE as ours (n): routes (a)/(b) split n into a full low-res pass
    # of n - m steps and m = round(n * denoise) high-res steps (ComfyUI's denoise: the tail of an
    # n-step schedule); (c) and ours split one n-step schedule at step k / at the switch. The
    # ComfyUI habit (a full n-step low-res pass, then m high-res steps) is reported beside, at
    # more NFE ("more_nfe").
    denoises = (0.4, 0.55, 0.7) if quick else (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    ks = (4, 6, 8) if quick else (2, 3, 4, 6, 8, 9, 10, 12, 14)
    switches = (500,) if quick else (300, 400, 500, 600, 700, 800, 900)
    habit = () if quick else (0.5, 0.7)
    groups = {}
    for d in denoises:
        m = max(1, round(n * d))
        r, w = timed_route(
            routes.route_latent_upscale, st.denh, st.denh, noise_lr, noise_hr, st.sigmas_fn, n - m, m, d, st.extra
        )
        groups.setdefault("a", []).append(add("a", "latent_upscale", r, w, f"denoise {d}: {n - m} lr + {m} hr steps"))
        r, w = timed_route(
            routes.route_pixel_hires,
            st.denh,
            st.denh,
            st.v2,
            st.v2,
            noise_lr,
            noise_hr,
            st.sigmas_fn,
            n - m,
            m,
            d,
            st.extra,
        )
        groups.setdefault("b", []).append(add("b", "pixel_hires_fix", r, w, f"denoise {d}: {n - m} lr + {m} hr steps"))
    for d in habit:
        m = max(1, round(n * d))
        r, w = timed_route(
            routes.route_latent_upscale, st.denh, st.denh, noise_lr, noise_hr, st.sigmas_fn, n, m, d, st.extra
        )
        add("a", "latent_upscale more_nfe", r, w, f"denoise {d}: {n} lr + {m} hr steps")
        r, w = timed_route(
            routes.route_pixel_hires,
            st.denh,
            st.denh,
            st.v2,
            st.v2,
            noise_lr,
            noise_hr,
            st.sigmas_fn,
            n,
            m,
            d,
            st.extra,
        )
        add("b", "pixel_hires_fix more_nfe", r, w, f"denoise {d}: {n} lr + {m} hr steps")
    for k in ks:
        r, w = timed_route(routes.route_step_handoff, st.denh, st.denh, noise_lr, sig, k, st.extra)
        groups.setdefault("c", []).append(add("c", "step_handoff_ksampleradv", r, w, f"k={k} of {n}"))
    # ours: the pack's resolution-aware level (default) and the paper's equal-SNR level, x0 of the
    # last low-res step (equal NFE); the paper's fresh x0 at the switch (+1 NFE) at t = 500
    for t in switches:
        for renoise, handoff, g, method in (
            ("resolution", "last", "d", "noisy_bridge"),
            ("paper", "last", "d_paper", "noisy_bridge_paper"),
            ("resolution", "fresh", "d_fresh", "noisy_bridge_fresh_x0"),
        ):
            if handoff == "fresh" and t != 500:
                continue
            r, w = timed_route(
                routes.route_noisy_bridge,
                st.denh,
                st.denh,
                st.v2,
                st.v2,
                noise_lr,
                noise_hr,
                sig,
                st.sched,
                switch_timestep=t,
                extra=st.extra,
                handoff=handoff,
                renoise=renoise,
            )
            row = add(
                "d",
                method,
                r,
                w,
                f"t={t} (k={r.settings['k']}), x0 {handoff}, "
                f"hand-off sigma {r.settings['handoff_sigma']:.3g} ({renoise})",
            )
            row["switch_timestep"] = t
            row["renoise"] = renoise
            groups.setdefault(g, []).append(row)
    for g, rs in groups.items():
        best = max(rs, key=lambda r: r["psnr_db"])
        best["best"] = True
        best["method"] += " (best)"
    for r in groups["d"]:
        if r.get("switch_timestep") == 500:
            r["default"] = True
            if not r.get("best"):
                r["method"] += " (default)"
    return rows


@torch.no_grad()
def case_resolution_matched(st: Setup, quick: bool, log=print) -> list[dict]:
    """The equal-split table: the routes at the same low-res / high-res split of one n-step
    schedule (k low-res steps, n - k high-res steps: equal NFE and equal high-res-equivalent
    cost). Ours switches at sigma_{k-1} and hands off with the x0 of its last step (no extra NFE):
    ``noisy_bridge`` at the resolution-aware level (the pack's default), ``noisy_bridge_paper`` at
    the paper's equal-SNR level. The three ComfyUI routes run their high-res stage as KSampler
    denoise (n - k) / n. ``latent_upscale_at_handoff_level`` (a diagnostic, not a route users
    take, never marked best) is route (a) with the denoise whose first sigma is nearest our
    hand-off level: it separates the gain of the level from the gain of the bridge."""
    n = st.steps
    sig = st.sigmas_fn(n)
    noise_hr, noise_lr = st.coupled()
    dec = st.v2.decode_model
    img_ref = dec(routes.route_reference(st.denh, noise_hr, sig, st.extra).x)
    rows = []
    for k in (3, 6) if quick else (3, 5, 7, 9, 10, 11, 13):
        m = n - k
        t_sw = int(schedules.sigma_to_t(sig[k - 1 : k], st.sched.table))

        def bridge(renoise, k=k):
            return routes.route_noisy_bridge(
                st.denh,
                st.denh,
                st.v2,
                st.v2,
                noise_lr,
                noise_hr,
                sig,
                st.sched,
                switch_timestep=None,
                switch_sigma=float(sig[k - 1]),
                extra=st.extra,
                renoise=renoise,
            )

        runs = [
            ("noisy_bridge", lambda: bridge("resolution")),
            ("noisy_bridge_paper", lambda: bridge("paper")),
            (
                "step_handoff_ksampleradv",
                lambda: routes.route_step_handoff(st.denh, st.denh, noise_lr, sig, k, st.extra),
            ),
            (
                "latent_upscale",
                lambda: routes.route_latent_upscale(
                    st.denh, st.denh, noise_lr, noise_hr, st.sigmas_fn, k, m, m / n, st.extra
                ),
            ),
            (
                "pixel_hires_fix",
                lambda: routes.route_pixel_hires(
                    st.denh, st.denh, st.v2, st.v2, noise_lr, noise_hr, st.sigmas_fn, k, m, m / n, st.extra
                ),
            ),
        ]
        group = []
        for name, fn in runs:
            t0 = time.perf_counter()
            r = fn()
            wall = time.perf_counter() - t0
            row = {
                "case": "resolution_split",
                "method": name,
                "k": k,
                "nfe": r.nfe,
                "nfe_lr": r.nfe_lr,
                "nfe_hr": r.nfe_hr,
                "hr_equiv": r.hr_equiv(),
                "vae_calls": r.vae_calls,
                **_image_cols(dec(r.x), img_ref),
                "wall_s": wall,
                "setting": f"split k={k} of {n} (switch t~{t_sw}; denoise {m / n:.2f})",
            }
            if name.startswith("noisy_bridge"):
                row["handoff_sigma"] = r.settings["handoff_sigma"]
                row["setting"] = (
                    f"split k={k} of {n} (switch t~{t_sw}; hand-off sigma {r.settings['handoff_sigma']:.3g})"
                )
            group.append(row)
        best = max(group, key=lambda r: r["psnr_db"])
        best["best"] = True
        best["method"] += " (best)"
        # diagnostic: route (a) re-noised at our hand-off level (the denoise whose first sigma is nearest)
        s_ours = group[0]["handoff_sigma"]
        d = min(
            (i / 100 for i in range(5, 101)),
            key=lambda d: abs(float(routes.denoise_sigmas(st.sigmas_fn, m, d)[0]) - s_ours),
        )
        t0 = time.perf_counter()
        r = routes.route_latent_upscale(st.denh, st.denh, noise_lr, noise_hr, st.sigmas_fn, k, m, d, st.extra)
        group.append(
            {
                "case": "resolution_split",
                "method": "latent_upscale_at_handoff_level",
                "k": k,
                "nfe": r.nfe,
                "nfe_lr": r.nfe_lr,
                "nfe_hr": r.nfe_hr,
                "hr_equiv": r.hr_equiv(),
                "vae_calls": 0,
                **_image_cols(dec(r.x), img_ref),
                "wall_s": time.perf_counter() - t0,
                "diagnostic": True,
                "setting": f"split k={k} of {n}; denoise {d:.2f} (first sigma "
                f"{float(routes.denoise_sigmas(st.sigmas_fn, m, d)[0]):.3g})",
            }
        )
        log("  split k=%d (t~%d): " % (k, t_sw) + ", ".join(f"{r['method']} {r['psnr_db']:.2f}" for r in group))
        rows += group
    return rows


@torch.no_grad()
def case_cross_space(taesd_dir, log=print) -> list[dict]:
    if taesd_dir is None:
        return [
            {"case": "cross_space", "method": "taesd->taesdxl", "setting": "skipped", "note": "TAESD weights not found"}
        ]
    from ..testbed.vaes import TAESD

    photos = sample_photos(128)
    b = TAESD.load("taesd", taesd_dir)
    xl = TAESD.load("taesdxl", taesd_dir)
    sd3 = TAESD.load("taesd3", taesd_dir)
    z_b = b.encode_model(photos)
    img_b = b.decode_model(z_b)
    rows = []
    t0 = time.perf_counter()
    z_xl = core.bridge_latent(z_b, b, xl)
    wall = time.perf_counter() - t0
    rows.append(
        {
            "case": "cross_space",
            "method": "taesd->taesdxl bridge",
            "nfe": 0,
            "vae_calls": 2,
            **_psnr_cols(xl.decode_model(z_xl), photos),
            "wall_s": wall,
            "setting": "4 photos 128px",
        }
    )
    rt_b = b.decode_model(b.encode_model(img_b))
    rows.append(
        {
            "case": "cross_space",
            "method": "taesd round trip (dec-enc-dec)",
            "nfe": 0,
            "vae_calls": 3,
            **_psnr_cols(rt_b, photos),
            "setting": "reference for the bridge",
        }
    )
    rt_xl = xl.decode_model(xl.encode_model(xl.decode_model(xl.encode_model(photos))))
    rows.append(
        {
            "case": "cross_space",
            "method": "taesdxl round trip (enc-dec-enc-dec)",
            "nfe": 0,
            "vae_calls": 4,
            **_psnr_cols(rt_xl, photos),
            "setting": "reference for the bridge",
        }
    )
    t0 = time.perf_counter()
    z_3 = core.bridge_latent(z_b, b, sd3)
    wall = time.perf_counter() - t0
    rows.append(
        {
            "case": "cross_space",
            "method": "taesd->taesd3 bridge (4->16 ch)",
            "nfe": 0,
            "vae_calls": 2,
            **_psnr_cols(sd3.decode_model(z_3), photos),
            "wall_s": wall,
            "setting": f"latent {tuple(z_3.shape[1:])}",
        }
    )
    z_up = core.bridge_latent(z_b, b, sd3, size=(256, 256), filter="bicubic")
    ref_up = core.resize_images(photos, (256, 256), "bicubic")
    rows.append(
        {
            "case": "cross_space",
            "method": "taesd->taesd3 bridge 2x",
            "nfe": 0,
            "vae_calls": 2,
            **_psnr_cols(sd3.decode_model(z_up), ref_up),
            "setting": "vs bicubic-upscaled photos",
        }
    )
    return rows


def _euler_alone(den, x, sigmas, extra):
    """Model alone with the same Euler form as ``coop_sample_euler`` (fusion.euler_step)."""
    n = x.shape[0]
    for i in range(len(sigmas) - 1):
        s = sigmas[i].expand(n)
        x = fusion.euler_step(x, s, sigmas[i + 1], den(x, s.to(x), **extra))
    return x


@torch.no_grad()
def case_coop_fusion(st: Setup, quick: bool, log=print) -> list[dict]:
    n = min(st.steps, 12 if quick else 20)
    sig = st.sigmas_fn(n)
    rows = []
    noise_hr, noise_lr = st.coupled()
    x_a = noise_lr * sig[0]
    lat_a = _euler_alone(st.den1, x_a, sig, st.extra)
    img_a = st.v1.decode_model(lat_a)
    ds = (0.0, 0.5, 1.0) if quick else (0.0, 0.25, 0.5, 0.75, 1.0)
    b_sizes = (32,) if quick else (32, 64)
    cheap = None
    for b_px in b_sizes:
        x_b = (noise_lr if b_px == 32 else noise_hr) * sig[0]
        img_b = core.resize_images(st.v2.decode_model(_euler_alone(st.denh, x_b, sig, st.extra)), (32, 32), "bilinear")
        base = {}
        for d in ds:
            st.v1.reset_calls(), st.v2.reset_calls()
            ca, cb = kdiff.CountingDenoiser(st.den1), kdiff.CountingDenoiser(st.denh)
            t0 = time.perf_counter()
            out_a, _ = fusion.coop_sample_euler(
                ca, cb, x_a, x_b, sig, sig, st.v1, st.v2, "eps", "eps", d=d, extra_a=st.extra, extra_b=st.extra
            )
            wall = time.perf_counter() - t0
            calls = vaes.vae_calls(st.v1, st.v2)
            img = st.v1.decode_model(out_a)
            base[d] = img
            pa, pb = psnr_db(img, img_a), psnr_db(img, img_b)
            rows.append(
                {
                    "case": "coop_fusion",
                    "method": f"coop d={d:g}, B {b_px}px",
                    "b_px": b_px,
                    "nfe": ca.nfe + cb.nfe,
                    "nfe_per_step": (ca.nfe + cb.nfe) / n,
                    "vae_calls": calls,
                    "vae_calls_per_step": calls / n,
                    "psnr_db": float(pa.mean()),
                    "psnr_to_b": float(pb.mean()),
                    "mse_to_a": float((img - img_a).pow(2).mean()),
                    "mse_to_b": float((img - img_b).pow(2).mean()),
                    "identical": bool(torch.equal(out_a, lat_a)),
                    "wall_s": wall,
                    "setting": f"A testbed 32px, B testbed-hr {b_px}px, {n} steps; psnr_db vs A alone",
                }
            )
            log(
                f"  coop B {b_px}px d={d:g}: vs A {float(pa.mean()):.2f} dB, vs B {float(pb.mean()):.2f} dB,"
                f" {calls / n:.0f} VAE calls/step"
            )
        rows.append(
            {
                "case": "coop_fusion",
                "method": f"B alone, {b_px}px",
                "b_px": b_px,
                "nfe": n,
                "vae_calls": 1,
                "psnr_db": float(psnr_db(img_b, img_a).mean()),
                "setting": f"testbed-hr {b_px}px decoded (resized to 32px) vs A alone",
            }
        )
        # cheap bridge VAE inside the loop (the real VAEs for the final decode)
        if b_px == 32:
            if cheap is None:
                imgs1, _ = st.tb1.dataset()
                imgs2, _ = st.tbh.dataset()
                g = torch.Generator().manual_seed(0)
                cheap = (
                    vaes.LinearVAE.fit(st.v1, imgs1[torch.randperm(imgs1.shape[0], generator=g)[:1500]], "linear-ae1"),
                    vaes.LinearVAE.fit(st.v2, imgs2[torch.randperm(imgs2.shape[0], generator=g)[:600]], "linear-ae2"),
                )
            for d in [d for d in ds if d in (0.5, 1.0)]:
                cheap[0].reset_calls(), cheap[1].reset_calls()
                t0 = time.perf_counter()
                out_a, _ = fusion.coop_sample_euler(
                    st.den1,
                    st.denh,
                    x_a,
                    x_b,
                    sig,
                    sig,
                    cheap[0],
                    cheap[1],
                    "eps",
                    "eps",
                    d=d,
                    extra_a=st.extra,
                    extra_b=st.extra,
                )
                wall = time.perf_counter() - t0
                img = st.v1.decode_model(out_a)
                calls = vaes.vae_calls(*cheap)
                rows.append(
                    {
                        "case": "coop_fusion",
                        "method": f"coop d={d:g} cheap bridge VAE",
                        "b_px": b_px,
                        "nfe": 2 * n,
                        "vae_calls": calls,
                        "vae_calls_per_step": calls / n,
                        "psnr_db": float(psnr_db(img, base[d]).mean()),
                        "psnr_to_a": float(psnr_db(img, img_a).mean()),
                        "wall_s": wall,
                        "setting": "LinearVAE (3x3 least squares) for both AEs inside the loop; psnr_db vs the same run with the real AEs",
                    }
                )
                log(f"  cheap bridge VAE d={d:g}: {rows[-1]['psnr_db']:.2f} dB vs real-AE fusion, {wall:.2f}s")
    return rows


@torch.no_grad()
def case_time_decoupled(st: Setup, log=print) -> list[dict]:
    n = st.steps
    sig = st.sigmas_fn(n)
    noise_hr, noise_lr = st.coupled()
    rows = []
    # identity: the same model on both sides
    plain = kdiff.sample_euler(st.den1, noise_lr * sig[0], sig, extra_args=st.extra)
    t0 = time.perf_counter()
    r = decoupled.time_decoupled_sample(
        st.den1,
        st.den1,
        noise_lr * sig[0],
        sig,
        st.sched,
        extra_structure=st.extra,
        extra_texture=st.extra,
        switch_timestep=500,
    )
    wall = time.perf_counter() - t0
    rows.append(
        {
            "case": "time_decoupled",
            "method": "same model (testbed->testbed)",
            "nfe": r.nfe_structure + r.nfe_texture,
            "vae_calls": 0,
            "psnr_db": float(psnr_db(st.v1.decode_model(r.x), st.v1.decode_model(plain)).mean()),
            "identical": bool(torch.equal(r.x, plain)),
            "wall_s": wall,
            "setting": f"t=500 (k={r.k}), psnr vs plain euler",
        }
    )
    img1 = _upsample_img(st.v1.decode_model(plain))
    img_h = st.v2.decode_model(kdiff.sample_euler(st.denh, noise_hr * sig[0], sig, extra_args=st.extra))
    rows.append(
        {
            "case": "time_decoupled",
            "method": "testbed alone 32px (upscaled)",
            "nfe": n,
            "vae_calls": 1,
            **_psnr_cols(img1, img_h),
            "setting": "psnr vs testbed-hr alone 64px",
        }
    )
    for t in (300, 500, 700):
        for v in (st.v1, st.v2):
            v.reset_calls()
        t0 = time.perf_counter()
        r = decoupled.time_decoupled_sample(
            st.den1,
            st.denh,
            noise_lr * sig[0],
            sig,
            st.sched,
            st.sched,
            switch_timestep=t,
            vae_structure=st.v1,
            vae_texture=st.v2,
            size=(64, 64),
            filter="bicubic",
            extra_structure=st.extra,
            extra_texture=st.extra,
            noise=noise_hr,
        )
        wall = time.perf_counter() - t0
        calls = vaes.vae_calls(st.v1, st.v2)
        img = st.v2.decode_model(r.x)
        rows.append(
            {
                "case": "time_decoupled",
                "method": f"testbed->testbed-hr t={t}",
                "nfe": r.nfe_structure + r.nfe_texture,
                "nfe_lr": r.nfe_structure,
                "nfe_hr": r.nfe_texture,
                "hr_equiv": r.nfe_texture + r.nfe_structure / 4,
                "vae_calls": calls,
                **_psnr_cols(img, img_h),
                "psnr_to_structure": float(psnr_db(img, img1).mean()),
                "wall_s": wall,
                "setting": f"k={r.k}; psnr vs testbed-hr alone 64px; psnr_to_structure vs testbed alone (upscaled)",
            }
        )
        log(
            f"  time-decoupled t={t}: vs texture alone {rows[-1]['psnr_db']:.2f} dB, vs structure alone "
            f"{rows[-1]['psnr_to_structure']:.2f} dB"
        )
    return rows


# ---------------------------------------------------------------------------------------------


def add_parser(bench_sub) -> None:
    p = bench_sub.add_parser("coop", help="Coop-Diffusion: noisy bridge, resolution hand-off, fusion, time-decoupled")
    p.add_argument("--json", help="write the rows here")
    p.add_argument("--quick", action="store_true", help="a small, fast configuration (smoke test)")
    p.add_argument("--classes", type=int, default=0, help="default 10 (3 with --quick)")
    p.add_argument("--seeds", type=int, default=0, help="seeds per class; default 2 (1 with --quick)")
    p.add_argument("--steps", type=int, default=0, help="euler steps, default 20 (12 with --quick)")
    p.add_argument("--cfg", type=float, default=5.0)
    p.add_argument("--scheduler", default="karras", choices=["karras", "normal"])
    p.add_argument(
        "--taesd", default=None, help="TAESD weights folder (default $TEMPO_TAESD_DIR or ../shared/assets/taesd)"
    )
    p.add_argument("--cases", default="noise_white,resolution,resolution_split,cross_space,coop_fusion,time_decoupled")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--quiet", action="store_true")


def _find_taesd(arg):
    from ..testbed.vaes import find_taesd, taesd_dir

    return find_taesd(arg) or taesd_dir(None)


def run(args) -> dict:
    quick = args.quick
    log = (lambda *a, **k: None) if args.quiet else print
    st = Setup(
        args.classes or (3 if quick else 10),
        args.seeds or (1 if quick else 2),
        args.cfg,
        args.steps or (12 if quick else 20),
        args.scheduler,
    )
    taesd = _find_taesd(args.taesd)
    cases = args.cases.split(",")
    rows = []
    t_all = time.perf_counter()
    for name in cases:
        t0 = time.perf_counter()
        log(f"case {name}:")
        if name == "noise_white":
            rows += case_noise_white(st, taesd, log)
        elif name == "resolution":
            rows += case_resolution(st, quick, log)
        elif name == "resolution_split":
            rows += case_resolution_matched(st, quick, log)
        elif name == "cross_space":
            rows += case_cross_space(taesd, log)
        elif name == "coop_fusion":
            rows += case_coop_fusion(st, quick, log)
        elif name == "time_decoupled":
            rows += case_time_decoupled(st, log)
        else:
            raise SystemExit(f"--cases: unknown case {name!r}")
        log(f"  ({time.perf_counter() - t0:.0f}s)")
    for r in rows:  # every row carries the shared columns (None where a case does not measure one)
        for key in ("nfe", "vae_calls", "psnr_db", "noise_std_ratio", "noise_lag1_corr", "wall_s"):
            r.setdefault(key, None)
    meta = {
        "batch": int(st.cond.numel()),
        "cfg": st.cfg,
        "steps": st.steps,
        "scheduler": st.scheduler,
        "sampler": "euler",
        "taesd": str(taesd) if taesd else None,
        "quick": quick,
        "total_s": round(time.perf_counter() - t_all, 1),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
    }
    return {"rows": rows, "meta": meta}


def main(args) -> int:
    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = run(args)
    print_table([{k: ("" if v is None else v) for k, v in r.items()} for r in result["rows"]], COLUMNS)
    if args.json:
        write_json(args.json, result)
    return 0
