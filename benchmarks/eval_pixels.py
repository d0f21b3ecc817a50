"""Reconstruction quality on the dropped patches of a test split (issue: pixel quantization).

    python benchmarks/eval_pixels.py DATA [--drop-ratio 0.2] [--n 2000] [--mae-epochs 10]

For the first ``--n`` test images: Grad-CAM++ of the proxy (trained on the training split, as
``dsquant compress`` does, cached) picks the patches to drop; each reconstructor rebuilds them;
PSNR and SSIM are measured on the dropped pixels only (SSIM: the mean of the local SSIM map
there). Reconstructors: OpenCV Telea and Navier-Stokes inpainting, a tiny MAE trained on the
training split (``dsquant train-mae``'s model; its training time is reported), and, as floors,
the per-image mean colour and zeros. Prints a Markdown table.
"""

import argparse
import time

import numpy as np

from dsquant.cache import Cache
from dsquant.embed import ProxyEncoder, fitted_proxy
from dsquant.data import read_dataset
from dsquant.pixels import PatchStore, default_patch, gradcam_plusplus, keep_masks, patch_scores
from dsquant.pixels.reconstruct import InpaintReconstructor, MAEReconstructor
from dsquant.pixels.train_mae import train_tiny_mae


class _MeanFill:
    name = "mean colour (floor)"

    def __call__(self, images, keep_px):
        out = images.copy()
        for i in range(len(images)):
            out[i][~keep_px[i]] = images[i][keep_px[i]].mean(axis=0).round().astype(np.uint8)
        return out


def masked_psnr_ssim(ref: np.ndarray, rec: np.ndarray, keep_px: np.ndarray) -> tuple[float, float]:
    from skimage.metrics import structural_similarity

    drop = ~keep_px
    diff = (ref.astype(np.float64) - rec.astype(np.float64))[drop]
    mse = float((diff**2).mean())
    psnr = 10 * np.log10(255.0**2 / max(mse, 1e-12))
    ssims = []
    for r, x, d in zip(ref, rec, drop):
        if not d.any():
            continue
        _, smap = structural_similarity(r, x, channel_axis=2, data_range=255, full=True, win_size=7 if min(r.shape[:2]) >= 7 else 3)
        ssims.append(smap.mean(axis=2)[d].mean())
    return psnr, float(np.mean(ssims))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data")
    p.add_argument("--drop-ratio", type=float, default=0.2)
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--patch", type=int)
    p.add_argument("--mae-epochs", type=int, default=10)
    p.add_argument("--mae-samples", type=int, default=None)
    p.add_argument("--mae", help="also a local MAE checkpoint (official layout)")
    p.add_argument("--save-mae", help="write the tiny MAE trained here to this .pt (for --reconstructor tiny-mae:PATH)")
    args = p.parse_args()
    cache = Cache()
    train = read_dataset(args.data, "train", cache=cache)
    test = read_dataset(args.data, "test", cache=cache)
    proxy = fitted_proxy(ProxyEncoder(), train, cache)  # the proxy compress uses (cached)
    patch = args.patch or default_patch(train.image_shape)
    images = test.images[: args.n]
    maps = gradcam_plusplus(proxy, images)
    masks = keep_masks(patch_scores(maps, patch), args.drop_ratio)
    store = PatchStore.from_images(images, test.labels[: args.n], np.arange(len(images)), masks, patch, test.classes)
    holes, keep_px = store.with_holes(), store.pixel_masks()
    t = time.perf_counter()
    mae, info = train_tiny_mae(train.images, patch, epochs=args.mae_epochs, max_samples=args.mae_samples)
    mae_s = time.perf_counter() - t
    if args.save_mae:
        from dsquant.pixels.train_mae import save_mae

        save_mae(mae, args.save_mae, info)
    recs = [InpaintReconstructor(), InpaintReconstructor(method="ns"), MAEReconstructor(mae, name=f"tiny MAE ({args.mae_epochs} epochs)"), _MeanFill()]
    if args.mae:
        from dsquant.pixels.mae import load_mae

        recs.append(MAEReconstructor(load_mae(args.mae), name=f"MAE {args.mae}"))
    print(f"\n{args.data} test split, first {len(images)} images; drop ratio {args.drop_ratio}, {patch} px patches "
          f"({store.grid[0]}x{store.grid[1]}), Grad-CAM++ of the proxy; tiny MAE trained in {mae_s / 60:.1f} min "
          f"({info['train_samples']} images x {args.mae_epochs} epochs, loss {info['first_loss']} -> {info['last_loss']})\n")
    print("| reconstructor | PSNR on dropped pixels (dB) | SSIM on dropped pixels | time per 1,000 images |")
    print("|---|---|---|---|")
    for r in recs:
        t = time.perf_counter()
        out = r(holes, keep_px)
        dt = time.perf_counter() - t
        assert np.array_equal(out[keep_px], images[keep_px])
        psnr, ssim = masked_psnr_ssim(images, out, keep_px)
        print(f"| {r.name} | {psnr:.2f} | {ssim:.4f} | {1000 * dt / len(images):.2f} s |", flush=True)
    zeros = masked_psnr_ssim(images, holes, keep_px)
    print(f"| zeros (floor) | {zeros[0]:.2f} | {zeros[1]:.4f} | - |")


if __name__ == "__main__":
    main()
