"""`digseg demo`: a local Gradio web app around a trained `DiGSegPipeline` (or an exported folder's
`OnnxDiGSegPipeline`); with LoRA adapters loaded, the page chooses among them ("base": none). Safety defaults
(docs/demo.md): bound to 127.0.0.1, no share link, analytics off, system fonts only, uploads checked first."""

from __future__ import annotations

import inspect
import ipaddress
import os
from collections import namedtuple
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..data.io import IMAGE_EXTENSIONS, load_image
from ..devices import resolve_device_and_dtype
from ..errors import ConfigError, DataError, DigsegError
from ..pipelines.visualize import class_overlay, grey_map, side_by_side, with_legend
from .commands import load_model, parse_adapters
from .parser import DEFAULT_MAX_PIXELS

DEFAULT_MODEL = Path("digseg-quickstart") / "model"
MAX_UPLOAD_SIZE = "100mb"  # Gradio rejects larger uploads before they reach `check_image_file`
MAX_ENSEMBLE, MAX_STEPS = 20, 50
VIEW_HEIGHT = 320  # pixels: each picture in the page
MIN_DISPLAY_SIDE = 256  # smaller images are shown enlarged (pixels repeated), e.g. quickstart scenes
MODE_PROMPT, MODE_CLASSES = "prompt", "classes"
BASE_CHOICE = "base"  # the adapter chooser's entry for the model without adapter
INSTALL_HINT = 'the demo needs Gradio: pip install -e ".[demo]"'
# Gradio's default look with system fonts (the default theme of Gradio 4 and 5 fetches Google fonts)
SYSTEM_FONTS = dict(font=["ui-sans-serif", "system-ui", "sans-serif"],
                    font_mono=["ui-monospace", "Consolas", "monospace"])


def check_image_file(path: str | os.PathLike[str] | None, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """An uploaded file -> RGB image as displayed (EXIF orientation applied), or `DataError` naming the file (not
    the upload folder). The pixel count is read from the header, so an oversized image is refused undecoded."""
    if not path:
        raise DataError("no image: upload an image first")
    p = Path(path)
    w = h = 0
    try:
        with Image.open(p) as header:  # lazy: reads the header only
            w, h = header.size
    except Image.DecompressionBombError as exc:  # more than 2 x Image.MAX_IMAGE_PIXELS: certainly too large
        raise DataError(f"image {p.name} is too large ({exc}); the limit is {max_pixels:,} pixels") from exc
    except Exception:  # not an image, missing, truncated header: load_image says which, naming the file
        pass
    if w * h > max_pixels:
        raise DataError(f"image {p.name} is too large: {w}x{h} = {w * h:,} pixels; the limit is {max_pixels:,} "
                        "pixels (digseg demo --max-pixels)")
    try:
        return load_image(p, exif_transpose=True)
    except DataError as exc:
        raise DataError(str(exc).replace(str(p), p.name)) from exc


def parse_classes(text: str) -> list[str] | None:
    """'sky, road,car' -> ['sky', 'road', 'car']; '' -> None (the model's own classes)."""
    if not text or not text.strip():
        return None
    names = [c.strip() for c in text.split(",")]
    if not all(names):
        raise ConfigError(f"the class list has an empty class name: {text!r}")
    return names


def is_loopback(host: str) -> bool:
    """True for 'localhost' and loopback addresses (127.0.0.0/8, ::1)."""
    try:
        return host.strip().lower() == "localhost" or ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:  # a host name other than localhost
        return False


def display_factor(height: int, width: int) -> int:
    """Whole-number zoom that brings the longer side of a small image to at least MIN_DISPLAY_SIDE (1 for large)."""
    return max(1, -(-MIN_DISPLAY_SIDE // max(height, width, 1)))


def enlarge(array: np.ndarray, factor: int) -> np.ndarray:
    """[H, W, ...] -> [H * factor, W * factor, ...], each pixel repeated (no smoothing: labels stay labels)."""
    return array if factor == 1 else array.repeat(factor, axis=0).repeat(factor, axis=1)


# What one run shows: overlay, comparison (input, prediction), uncertainty (None for an ensemble of 1), summary
DemoResult = namedtuple("DemoResult", "overlay comparison uncertainty summary")


def use_adapter(pipe: Any, choice: str) -> None:
    """Make the chooser's `choice` (an adapter's name, or BASE_CHOICE) active, unless it is already."""
    name = None if choice == BASE_CHOICE else choice
    if pipe.active_adapter != name:
        pipe.set_adapter(name)


def segment(pipe: Any, path: str | os.PathLike[str] | None, mode: str, text: str, ensemble_size: int, steps: int,
            seed: int, max_pixels: int = DEFAULT_MAX_PIXELS, adapter: str | None = None) -> DemoResult:
    """Check the upload, run the pipeline once, and build the pictures (enlarged below MIN_DISPLAY_SIDE).
    mode "prompt": `text` is one prompt (binary); "classes": a comma-separated class list; empty `text`: the
    model's (active adapter's) own classes. `adapter`: the one to run with (BASE_CHOICE: none)."""
    image = check_image_file(path, max_pixels)
    if adapter is not None:
        use_adapter(pipe, adapter)
    if mode not in (MODE_PROMPT, MODE_CLASSES):
        raise ConfigError(f"unknown mode {mode!r}: choose {MODE_PROMPT!r} or {MODE_CLASSES!r}")
    prompt = text.strip() if mode == MODE_PROMPT and text and text.strip() else None
    classes = parse_classes(text) if mode == MODE_CLASSES else None
    ensemble_size, steps = int(ensemble_size), int(steps)
    for what, value, most in (("ensemble size", ensemble_size, MAX_ENSEMBLE), ("steps", steps, MAX_STEPS)):
        if not 1 <= value <= most:
            raise ConfigError(f"{what} must be 1..{most}, got {value}")
    try:
        seed = int(seed)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"seed must be a whole number, got {seed!r}") from exc
    generator = seed  # an exported folder on onnxruntime: numpy's generator
    if not hasattr(pipe, "manifest"):
        import torch

        generator = torch.Generator().manual_seed(seed)
    result = pipe(image, prompt=prompt, classes=classes, ensemble_size=ensemble_size, num_inference_steps=steps,
                  generator=generator, show_progress_bar=False)
    zoom = display_factor(image.height, image.width)
    rgb = enlarge(np.asarray(image), zoom)  # [H', W', 3]
    labels = enlarge(np.asarray(result.labels[0]), zoom)  # [H', W']
    plain = class_overlay(rgb, labels, result.class_names)
    u = enlarge(np.asarray(result.uncertainty[0]), zoom) if result.uncertainty is not None else None
    unc = grey_map(u, vmax=max(float(u.max()), 1e-6)) if u is not None else None
    ask = (f"prompt {prompt!r}" if prompt else "classes " + ", ".join(classes) if classes
           else "the model's own classes")
    summary = (f"{image.width}x{image.height} image; {ask}; ensemble {ensemble_size}, {steps} step(s), seed {seed}"
               + ("" if adapter is None else f"; adapter {adapter}")
               + ("" if unc is not None else "; uncertainty needs ensemble size > 1"))
    return DemoResult(with_legend(plain, labels, result.class_names), (Image.fromarray(rgb), plain), unc, summary)


def page_header(pipe: Any, max_pixels: int) -> str:
    """The page's title and what the model (with adapters: the active one) segments."""
    own = ", ".join(pipe.class_names or []) or "none: give a prompt or classes"
    active = (f"Adapter: {pipe.active_adapter or BASE_CHOICE} (task: {pipe.config.task or 'not recorded'}). "
              if getattr(pipe, "adapters", None) else "")
    return (f"# DiGSeg demo\nText-prompted segmentation by latent diffusion. {active}Model classes: {own}.\n\n"
            f"Images up to {max_pixels:,} pixels ({', '.join(IMAGE_EXTENSIONS)}).")


def slider_state(pipe: Any) -> dict:
    """The ensemble and steps sliders: fixed, with a note, for a one-step model (one deterministic pass)."""
    one_step = pipe.config.objective == "one-step"
    return {"interactive": not one_step, "info": "one-step model: one deterministic pass" if one_step else None}


def runtime_footer(pipe: Any) -> str:
    """Where the demo's model runs: device (its name), dtype and the libraries' versions."""
    info = pipe.runtime_info()
    versions = ", ".join(f"{k} {info[k]}" for k in ("onnxruntime", "torch", "diffusers", "digseg") if k in info)
    return f"{info['device']} ({info['device_name']}), {info['dtype']}; {versions}"


def import_gradio():
    """`gradio`, imported with analytics off, or `DigsegError` saying how to install it."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    try:
        import gradio as gr
    except ImportError as exc:
        raise DigsegError(f"{INSTALL_HINT} ({exc})") from exc
    return gr


def start_demo(demo: Any, host: str = "127.0.0.1", port: int | None = None, block: bool = True) -> None:
    """Launch a built demo with the safe defaults (one run at a time, no run history kept in the browser).
    `block=False` returns at once (stop it with `demo.close()`)."""
    gr = import_gradio()
    options = dict(server_name=host, server_port=port, share=False, prevent_thread_lock=not block, quiet=not block,
                   max_file_size=MAX_UPLOAD_SIZE, theme=gr.themes.Default(**SYSTEM_FONTS), run_history=False)
    options = {k: v for k, v in options.items() if k in inspect.signature(demo.launch).parameters}  # Gradio 4 to 6
    demo.queue(default_concurrency_limit=1).launch(**options)


def build_demo(pipe: Any, max_pixels: int = DEFAULT_MAX_PIXELS) -> Any:
    """A built `DiGSegPipeline` -> `gr.Blocks` (not launched); components carry element ids (digseg-...)."""
    gr = import_gradio()
    has_slider = hasattr(gr, "ImageSlider")
    names = getattr(pipe, "adapters", None) or []  # loaded LoRA adapters (none: no chooser)
    # Gradio < 6 takes the theme here, Gradio >= 6 in launch() (see `start_demo`)
    theme = ({} if "theme" in inspect.signature(gr.Blocks.launch).parameters
             else {"theme": gr.themes.Default(**SYSTEM_FONTS)})
    view = dict(type="pil", interactive=False, height=VIEW_HEIGHT)  # each picture shown
    with gr.Blocks(title="DiGSeg demo", analytics_enabled=False, **theme) as demo:
        header = gr.Markdown(page_header(pipe, max_pixels), elem_id="digseg-header")
        with gr.Row():
            with gr.Column():
                chooser = gr.Dropdown([BASE_CHOICE, *names], value=pipe.active_adapter or BASE_CHOICE,
                                      label="Adapter", info=f"{BASE_CHOICE}: the model without adapter",
                                      elem_id="digseg-adapter") if names else None
                upload = gr.File(label="Image", type="filepath", elem_id="digseg-upload")
                preview = gr.Image(label="Input", elem_id="digseg-preview", **view)
                mode = gr.Radio([MODE_PROMPT, MODE_CLASSES], value=MODE_PROMPT, label="Ask with", elem_id="digseg-mode",
                                info="prompt: one thing (binary); classes: a comma-separated list")
                text = gr.Textbox(label="Prompt or classes", elem_id="digseg-text",
                                  placeholder="empty: the model's own classes")
                ensemble = gr.Slider(1, MAX_ENSEMBLE, value=1, step=1, label="Ensemble size", elem_id="digseg-ensemble",
                                     **slider_state(pipe))
                steps = gr.Slider(1, MAX_STEPS, value=min(max(1, pipe.config.default_denoising_steps), MAX_STEPS),
                                  step=1, label="Denoising steps", elem_id="digseg-steps", **slider_state(pipe))
                seed = gr.Number(value=0, precision=0, label="Seed", elem_id="digseg-seed")
                run = gr.Button("Segment", variant="primary", elem_id="digseg-run")
            with gr.Column():
                result = gr.Image(label="Prediction", format="png", elem_id="digseg-overlay", **view)
                # Gradio versions without ImageSlider show the two side by side
                compare = (gr.ImageSlider if has_slider else gr.Image)(label="Input | prediction",
                                                                       elem_id="digseg-compare", **view)
                uncertainty = gr.Image(label="Uncertainty (ensemble spread; brighter = less sure)", format="png",
                                       elem_id="digseg-uncertainty", **view)
                summary = gr.Markdown(elem_id="digseg-summary")
        gr.Markdown(f"Runs on {runtime_footer(pipe)}.", elem_id="digseg-runtime")

        def on_upload(path):
            try:
                image = check_image_file(path, max_pixels)
            except DigsegError as exc:
                raise gr.Error(str(exc)) from exc
            return Image.fromarray(enlarge(np.asarray(image), display_factor(image.height, image.width)))

        def on_run(path, mode_value, text_value, ensemble_value, steps_value, seed_value, adapter_value=None):
            try:
                out = segment(pipe, path, mode_value, text_value, ensemble_value, steps_value, seed_value, max_pixels,
                              adapter_value)
            except DigsegError as exc:
                raise gr.Error(str(exc)) from exc
            return out if has_slider else out._replace(comparison=side_by_side(*out.comparison))

        def on_adapter(choice):  # the header and sliders follow the chosen adapter's classes, task and objective
            use_adapter(pipe, choice)
            slider = gr.update(**slider_state(pipe))
            return page_header(pipe, max_pixels), slider, slider

        upload.upload(on_upload, inputs=upload, outputs=preview)
        upload.clear(lambda: None, outputs=preview)
        # one run at a time, switches included: the model's queue (concurrency_id) is shared by both events
        run.click(on_run, inputs=[upload, mode, text, ensemble, steps, seed] + ([chooser] if chooser else []),
                  outputs=[result, compare, uncertainty, summary], concurrency_limit=1, concurrency_id="model")
        if chooser is not None:
            chooser.change(on_adapter, inputs=chooser, outputs=[header, ensemble, steps], concurrency_limit=1,
                           concurrency_id="model")
    return demo


def launch_demo(model_dir: str | os.PathLike[str] | None = None, host: str = "127.0.0.1", port: int | None = None,
                max_pixels: int = DEFAULT_MAX_PIXELS, device: str = "auto", dtype: str = "auto",
                adapters: list[str] | None = None) -> None:
    """Load the model (default: the quickstart's) and serve the demo until interrupted (Ctrl-C). `adapters`
    (--adapter values): loaded onto the model, which is their base, the first one active."""
    if max_pixels < 1:
        raise ConfigError(f"--max-pixels must be >= 1, got {max_pixels}")
    if model_dir is None and not (DEFAULT_MODEL / "model_index.json").is_file():
        raise DigsegError(f"no model at {DEFAULT_MODEL}: run `digseg quickstart` first, or pass --model DIR "
                          "(a DiGSeg model folder)")
    model = DEFAULT_MODEL if model_dir is None else Path(model_dir)
    named = list(parse_adapters(adapters or []))
    if BASE_CHOICE in named:
        raise ConfigError(f"--adapter {BASE_CHOICE}=...: the demo's chooser calls the model without adapter "
                          f"{BASE_CHOICE!r}; give the adapter another name")
    placement = resolve_device_and_dtype(device, dtype)
    import_gradio()  # fail early, before the model loads
    pipe = load_model(model, placement, adapters, named[0] if named else None)
    Image.MAX_IMAGE_PIXELS = max_pixels  # PIL's own decompression-bomb guard: it refuses twice this outright
    if not is_loopback(host):
        print(f"warning: serving on {host}, not a loopback address: anyone who can reach this machine can use "
              "the demo (there is no login)")
    demo = build_demo(pipe, max_pixels)
    with_adapters = f" with adapters {', '.join(pipe.adapters)}" if adapters else ""
    print(f"serving model {model}{with_adapters} on {runtime_footer(pipe)}; press Ctrl-C to stop")
    start_demo(demo, host, port)
