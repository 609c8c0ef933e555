"""Time the full-size Kimi K2.5 vision tower and projector on one image, beside transformers.

Both run the same random bf16 weights (MoonViT-3D, 27 layers, width 1152, and the patch-merger
projector) on the same pixels of a drawn 1024×1024 image, preprocessed by kimi_k25.media. The
result goes to stdout and, with --write, into docs/benchmarks.md between the vision markers.

    .venv/bin/python bench/vision_encode.py [--size 1024] [--repeats 2] [--write]
"""

from __future__ import annotations

import argparse
import io
import platform
import sys
import time
from pathlib import Path

import torch
from PIL import Image, ImageDraw
from tqdm import tqdm

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from reference import vision_state_dict_official  # noqa: E402

from kimi_k25.checkpoint.names import resolve  # noqa: E402
from kimi_k25.media import MediaConfig, concat_media, process_image  # noqa: E402
from kimi_k25.model.config import KimiK25Config  # noqa: E402
from kimi_k25.model.vision import PatchMergerProjector, VisionTower  # noqa: E402

BENCHMARKS_PAGE = REPO / "docs" / "benchmarks.md"
BEGIN_MARKER = "<!-- vision-encode:begin -->"
END_MARKER = "<!-- vision-encode:end -->"


def drawn_image(size: int) -> bytes:
    """Draw shapes, lines and text into a PNG, so that the pixels are not uniform."""
    image = Image.new("RGB", (size, size), (240, 236, 220))
    draw = ImageDraw.Draw(image)
    for i in range(0, size, 37):
        draw.line([(0, i), (size, size - i)], fill=(i % 256, 80, 160), width=3)
        draw.ellipse([(i, i // 2), (i + 60, i // 2 + 40)], outline=(20, 120, (3 * i) % 256), width=4)
    draw.text((20, 20), "kimi-k25 vision benchmark", fill=(0, 0, 0))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def build_models(config: KimiK25Config):
    """Return (ours, transformers') tower + projector pairs holding the same random bf16 weights."""
    from transformers import Kimi_K25Config
    from transformers.models.kimi_k25.modeling_kimi_k25 import Kimi_K25MultimodalProjection, Kimi_K25VisionModel

    vision = config.vision
    hf_config = Kimi_K25Config(
        text_config={"hidden_size": vision.text_hidden_size},
        vision_config={"hidden_size": vision.hidden_size, "intermediate_size": vision.intermediate_size,
                       "num_hidden_layers": vision.num_hidden_layers,
                       "num_attention_heads": vision.num_attention_heads, "patch_size": vision.patch_size,
                       "pos_emb_height": vision.init_pos_emb_height, "pos_emb_width": vision.init_pos_emb_width,
                       "pos_emb_time": vision.init_pos_emb_time},
        projection_hidden_size=vision.hidden_size)
    torch.manual_seed(0)
    hf_tower = Kimi_K25VisionModel(hf_config.vision_config).to(torch.bfloat16).eval()
    hf_projector = Kimi_K25MultimodalProjection(hf_config).to(torch.bfloat16).eval()

    state = {f"vision_tower.{k}": v for k, v in hf_tower.state_dict().items()}
    state.update({f"mm_projector.{k}": v for k, v in hf_projector.state_dict().items()})
    official = vision_state_dict_official(state, vision.num_attention_heads)

    tower, projector = VisionTower(vision).to(torch.bfloat16).eval(), PatchMergerProjector(vision).to(torch.bfloat16).eval()
    params = {f"vision_tower.{k}": v for k, v in tower.named_parameters()}
    params.update({f"mm_projector.{k}": v for k, v in projector.named_parameters()})
    with torch.no_grad():
        for name, tensor in official.items():
            params[resolve(name, num_hidden_layers=0).param].copy_(tensor)
    return (tower, projector), (hf_tower, hf_projector)


def time_runs(label: str, run, repeats: int) -> float:
    run()  # warm-up
    times = []
    for _ in tqdm(range(repeats), desc=label, unit="run"):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024, help="image side in pixels (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs after one warm-up (default: %(default)s)")
    parser.add_argument("--write", action="store_true", help="write the result into docs/benchmarks.md")
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())

    config = KimiK25Config.from_preset("kimi-k2.5")
    item = process_image(drawn_image(args.size), MediaConfig())
    pixel_values, grids = concat_media([item])
    pixel_values = pixel_values.to(torch.bfloat16)
    (tower, projector), (hf_tower, hf_projector) = build_models(config)

    with torch.inference_mode():
        ours = projector(tower(pixel_values, grids))
        theirs = hf_projector(hf_tower(pixel_values, grid_thw=torch.tensor(grids)).pooler_output).squeeze(1)
        difference = ((ours.float() - theirs.float()).abs().max() / theirs.float().abs().max()).item()
        our_seconds = time_runs("kimi_k25", lambda: projector(tower(pixel_values, grids)), args.repeats)
        hf_seconds = time_runs("transformers", lambda: hf_projector(
            hf_tower(pixel_values, grid_thw=torch.tensor(grids)).pooler_output), args.repeats)

    t, h, w = grids[0]
    lines = [
        f"Image {args.size}×{args.size} → grid {t}×{h}×{w} ({t * h * w} patches, {item.num_tokens} tokens), "
        f"bf16, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}.",
        "",
        "| engine | seconds per image | ratio |",
        "|---|---|---|",
        f"| kimi_k25 | {our_seconds:.2f} | {hf_seconds / our_seconds:.2f}× transformers |",
        f"| transformers 5.25 | {hf_seconds:.2f} | 1.00× |",
        "",
        f"Max difference of the projector outputs, relative to the largest value: {difference:.1e} (bf16).",
    ]
    text = "\n".join(lines)
    print(text)
    if args.write:
        page = BENCHMARKS_PAGE.read_text() if BENCHMARKS_PAGE.exists() else "# Benchmarks\n"
        block = f"{BEGIN_MARKER}\n{text}\n{END_MARKER}"
        if BEGIN_MARKER in page:
            before, rest = page.split(BEGIN_MARKER, 1)
            page = before + block + rest.split(END_MARKER, 1)[1]
        else:
            page = page.rstrip() + "\n\n## Vision encoder\n\n`.venv/bin/python bench/vision_encode.py --write`\n\n" + block + "\n"
        BENCHMARKS_PAGE.parent.mkdir(exist_ok=True)
        BENCHMARKS_PAGE.write_text(page)
    return 0


if __name__ == "__main__":
    sys.exit(main())
