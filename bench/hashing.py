"""Media hashing throughput: ``hash_media`` against python-threatexchange's PDQ hasher.

Runs, in one go and on this machine, for JPEGs of 1, 4 and 12 megapixels and PNGs of
the same sizes (built in memory from the PDQ reference photos in tests/fixtures/pdq):

- baseline: what python-threatexchange's ``PdqSignal.hash_from_bytes`` does
  (``pdq_hasher.pdq_from_bytes``): ``Image.open``, ``np.asarray`` of the image as
  decoded (converted to RGB only when it is LA, grey stacked to three channels), at full
  size, no resizing, then ``pdqhash.compute`` and its bit-string-to-hex conversion;
- ours: ``relay.media.hashes.hash_media`` (sniff, draft decode of JPEGs, EXIF orientation,
  RGB, shrink, PDQ with its dihedral variants, SHA-256, MD5);
- the floor: the bare decode of the same file at the scale hash_media decodes it
  (``img.draft("RGB", (JPEG_HASH_SIZE, JPEG_HASH_SIZE))`` + ``img.load()`` for JPEGs, the full
  ``img.load()`` for PNGs, which have no reduced-scale decode);
- ours on both cores, in a process pool and in a thread pool (two workers each).

One more class, camera-12, is the reference 12 MP phone photo itself, unresized: a
single file, but real camera detail, which JPEG-decodes slower than resized pictures.

Single-core numbers are images per second of one thread hashing the class's images one
after the other: warm-up pass, then ``--reps`` repetitions, median; the methods take turns
within each repetition so that the machine's moods fall on all of them alike.

Also checked: the Hamming distance between our hash and the baseline's for images of
quality >= 80 (a picture stored on its side with an EXIF orientation is compared through
our dihedral variants, since the baseline hashes the stored pixels), and that every
bridge-mods edit still matches the original (<= 31 bits). Ratios are printed last.

    python bench/hashing.py [--reps 5] [--classes jpeg-1,jpeg-12,png-1,camera-12] [--scales]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import io
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pdqhash
from PIL import Image, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from relay.hashing import Pdq
from relay.hashing import pdq as pdq_step  # where hash_media's PDQ step lives
from relay.media import decode
from relay.media.decode import JPEG_HASH_SIZE
from relay.media.hashes import hash_media

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "pdq"
MEGAPIXELS = (1, 4, 12)
JPEG_QUALITY = 90
GOOD_QUALITY = 80  # the hash-agreement check covers images of at least this PDQ quality

# Targets from the issue.
TARGET_RATIO = {"jpeg-12": 15.0, "jpeg-1": 3.0}
TARGET_FLOOR = 1.5
TARGET_BITS = 8


# -- the baseline: python-threatexchange ----------------------------------------------


def baseline(data: bytes) -> tuple[str, int]:
    """threatexchange/signal_type/pdq/pdq_hasher.py, ``pdq_from_bytes``, step for step."""
    image = Image.open(io.BytesIO(data))
    if image.mode == "LA":
        image = image.convert("RGB")
    array = np.asarray(image)
    if array.ndim == 2:
        array = np.concatenate([array[..., np.newaxis]] * 3, axis=2)
    hash_vector, quality = pdqhash.compute(array)
    bin_str = "".join([str(x) for x in hash_vector])
    return f"{int(bin_str, 2):0{(len(bin_str) + 3) // 4}x}", quality


def floor(data: bytes) -> tuple[int, int]:
    """The bare decode, at the scale hash_media decodes at (draft mode for JPEGs)."""
    with Image.open(io.BytesIO(data)) as img:
        if img.format == "JPEG":
            img.draft("RGB", (JPEG_HASH_SIZE, JPEG_HASH_SIZE))
        img.load()
        return img.size


def exact_hashes(data: bytes) -> None:
    hashlib.sha256(data).hexdigest()
    hashlib.md5(data, usedforsecurity=False).hexdigest()


# -- the corpus -------------------------------------------------------------------------


@dataclass
class Sample:
    name: str
    data: bytes
    sideways: bool = False  # stored on its side, with EXIF orientation 6


@dataclass
class Klass:
    name: str
    samples: list[Sample]
    pixels: str = ""  # decoded size(s) at the floor's scale
    results: dict[str, float] = field(default_factory=dict)


def sources() -> dict[str, Image.Image]:
    """The reference photos, upright."""

    def load(name: str) -> Image.Image:
        with Image.open(FIXTURES / name) as img:
            return ImageOps.exif_transpose(img)

    return {
        "camera": load("exif-rotn/exif-rotn-6.jpg").convert("RGB"),  # a 12 MP phone photo
        "bridge": load("bridge-mods/aaa-orig.jpg").convert("RGB"),
        "pen": load("misc/pen-and-coaster.png"),  # RGBA
        "sea": load("labelme-subset/q0122.jpg").convert("RGB"),  # 256x256, smooth
    }


# Two distinct pictures per source: as is, and mirrored and cropped to a corner's 75 %.
VARIANTS: dict[str, tuple[bool, tuple[float, float, float, float]]] = {
    "a": (False, (0.0, 0.0, 1.0, 1.0)),
    "b": (True, (0.25, 0.0, 1.0, 0.75)),
}


def picture(src: Image.Image, variant: str, megapixels: float) -> Image.Image:
    flip, (x0, y0, x1, y1) = VARIANTS[variant]
    w, h = src.size
    img = src.crop((round(x0 * w), round(y0 * h), round(x1 * w), round(y1 * h)))
    if flip:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    aspect = img.width / img.height
    width = round((megapixels * 1e6 * aspect) ** 0.5)
    return img.resize((width, round(width / aspect)), Image.Resampling.LANCZOS)


def encode(img: Image.Image, fmt: str, **params: object) -> bytes:
    out = io.BytesIO()
    img.save(out, fmt, **params)
    return out.getvalue()


def corpus(wanted: Sequence[str]) -> list[Klass]:
    """JPEG (quality 90) and PNG classes; each JPEG class also has a phone-style photo
    stored on its side with EXIF orientation 6."""
    photos = sources()
    classes = []
    for fmt in ("jpeg", "png"):
        for mp in MEGAPIXELS:
            name = f"{fmt}-{mp}"
            if name not in wanted:
                continue
            samples = []
            for src_name, src in photos.items():
                for variant in VARIANTS:
                    img = picture(src, variant, mp)
                    label = f"{src_name}-{variant}"
                    if fmt == "jpeg":
                        data = encode(img.convert("RGB"), "JPEG", quality=JPEG_QUALITY)
                    else:
                        data = encode(img, "PNG")
                    samples.append(Sample(label, data))
            if fmt == "jpeg":
                exif = Image.Exif()
                exif[0x0112] = 6
                stored = picture(photos["camera"], "a", mp).transpose(Image.Transpose.ROTATE_90)
                data = encode(stored, "JPEG", quality=JPEG_QUALITY, exif=exif)
                samples.append(Sample("camera-sideways", data, sideways=True))
            classes.append(Klass(name, samples))
    if "camera-12" in wanted:
        # The reference camera JPEG as it came from the phone: denser than the resized
        # pictures (3.7 MB for 12 MP, against 1.8-2.3 MB), stored on its side.
        data = (FIXTURES / "exif-rotn" / "exif-rotn-6.jpg").read_bytes()
        classes.append(Klass("camera-12", [Sample("camera-original", data, sideways=True)]))
    for klass in classes:
        sizes = sorted({floor(s.data) for s in klass.samples}, key=lambda s: s[0] * s[1])
        klass.pixels = f"{sizes[0][0]}x{sizes[0][1]}..{sizes[-1][0]}x{sizes[-1][1]}"
    return classes


# -- timing -------------------------------------------------------------------------------


def images_per_second(
    methods: dict[str, Callable[[bytes], object]], data: list[bytes], reps: int
) -> dict[str, float]:
    """Each method over all of ``data``, taking turns; images/s from the median pass."""
    for method in methods.values():
        for d in data:
            method(d)
    passes: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(reps):
        for name, method in methods.items():
            started = time.perf_counter()
            for d in data:
                method(d)
            passes[name].append(time.perf_counter() - started)
    return {name: len(data) / statistics.median(t) for name, t in passes.items()}


def pooled(executor: concurrent.futures.Executor, data: list[bytes], reps: int) -> float:
    """hash_media over ``data`` (four times over, so both workers stay busy), images/s."""
    work = data * 4
    list(executor.map(hash_media, data))
    passes = []
    for _ in range(reps):
        started = time.perf_counter()
        list(executor.map(hash_media, work))
        passes.append(time.perf_counter() - started)
    return len(work) / statistics.median(passes)


def two_threads(function: Callable[[object], object], items: list[object], reps: int) -> float:
    """Speed-up of two threads sharing ``items`` over one thread doing them all."""

    def run_all(part: list[object]) -> None:
        for item in part:
            function(item)

    one, two = [], []
    run_all(items)
    for _ in range(reps):
        started = time.perf_counter()
        run_all(items + items)
        one.append(time.perf_counter() - started)
        started = time.perf_counter()
        workers = [threading.Thread(target=run_all, args=(items,)) for _ in range(2)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        two.append(time.perf_counter() - started)
    return statistics.median(one) / statistics.median(two)


@dataclass
class PdqInput:
    """What hash_media's PDQ step was given: the pixels, and the full size they stand for."""

    array: np.ndarray
    full: tuple[int, int] | None = None
    scale: int = 1


def our_pdq(given: PdqInput) -> object:
    """The PDQ step as hash_media runs it on a first frame (hash and dihedral variants)."""
    if hasattr(pdq_step, "hash_pixels"):  # PDQ in numpy, pdqhash where rounding could matter
        return pdq_step.hash_pixels(given.array, dihedral=True, full=given.full, scale=given.scale)
    return pdqhash.compute_dihedral(given.array)  # before: pdqhash throughout


def pdqhash_dihedral(given: PdqInput) -> object:
    return pdqhash.compute_dihedral(given.array)


def pdqhash_compute(given: PdqInput) -> object:
    return pdqhash.compute(given.array)


def pdq_inputs(data: list[bytes]) -> tuple[list[PdqInput], int]:
    """What hash_media hashes (captured by wrapping its PDQ step), and how many of them
    went to pdqhash."""
    captured: list[PdqInput] = []
    wrapped = "hash_pixels" if hasattr(pdq_step, "hash_pixels") else None
    originals = pdqhash.compute, pdqhash.compute_dihedral, getattr(pdq_step, "hash_pixels", None)
    fallbacks = 0

    def spy_ours(array: np.ndarray, dihedral: bool, **shrunk: object) -> object:
        captured.append(PdqInput(array, **shrunk))  # type: ignore[arg-type]
        return originals[2](array, dihedral, **shrunk)  # type: ignore[misc]

    def spy_pdqhash(original: Callable[[np.ndarray], object]) -> Callable[[np.ndarray], object]:
        def call(array: np.ndarray) -> object:
            nonlocal fallbacks
            fallbacks += 1
            if not wrapped:
                captured.append(PdqInput(array))
            return original(array)

        return call

    pdqhash.compute, pdqhash.compute_dihedral = (spy_pdqhash(f) for f in originals[:2])
    if wrapped:
        pdq_step.hash_pixels = spy_ours  # type: ignore[assignment]
    try:
        for d in data:
            before = len(captured)
            hash_media(d)
            assert len(captured) == before + 1, "one PDQ call per still image"
    finally:
        pdqhash.compute, pdqhash.compute_dihedral = originals[:2]
        if wrapped:
            pdq_step.hash_pixels = originals[2]  # type: ignore[assignment]
    return captured, fallbacks if wrapped else 0


# -- hash agreement -------------------------------------------------------------------------


def distances(klass: Klass) -> dict[str, int]:
    """Bits between our hash and the baseline's, for images of quality >= 80."""
    found = {}
    for sample in klass.samples:
        expected, quality = baseline(sample.data)
        if quality < GOOD_QUALITY:
            continue
        ours = hash_media(sample.data)
        if sample.sideways:
            # The baseline hashed the stored (sideways) pixels, we hash the upright
            # picture: the baseline's hash is one of our dihedral variants.
            found[sample.name] = min(Pdq.distance(v, expected) for v in ours.pdq_dihedral)
        else:
            found[sample.name] = Pdq.distance(ours.pdq[0].hash, expected)
    return found


def bridge_mods() -> dict[str, int]:
    folder = FIXTURES / "bridge-mods"
    original = hash_media((folder / "aaa-orig.jpg").read_bytes()).pdq[0].hash
    return {
        path.name: Pdq.distance(hash_media(path.read_bytes()).pdq[0].hash, original)
        for path in sorted(folder.iterdir())
        if path.name != "aaa-orig.jpg"
    }


def draft_scales(klass: Klass, reps: int) -> None:
    """JPEG decode at 1/1 to 1/8 scale, then PDQ of the pixels as decoded (pdqhash) or
    as the full-size picture they stand for (hash_media's PDQ step): speed and bits."""
    good = [s for s in klass.samples if not s.sideways and baseline(s.data)[1] >= GOOD_QUALITY]
    expected = [baseline(s.data)[0] for s in good]
    seen = set()
    for size in (1024, 512, 256, 128):

        def drafted(data: bytes, size: int = size) -> PdqInput:
            with Image.open(io.BytesIO(data)) as img:
                full = img.size
                img.draft("RGB", (size, size))
                scale = decode._draft_scale(full, img.size)
                return PdqInput(np.asarray(img), (full[1], full[0]), scale)

        def plain(data: bytes) -> str:
            vector, _ = pdqhash.compute(drafted(data).array)
            return np.packbits(vector.astype(np.uint8)).tobytes().hex()

        def emulated(data: bytes) -> str:
            return our_pdq(drafted(data))[0][0]  # type: ignore[index]

        sizes = tuple(drafted(s.data).array.shape[:2] for s in good)
        if sizes in seen:
            continue
        seen.add(sizes)
        rates = images_per_second({"plain": plain, "full": emulated}, [s.data for s in good], reps)
        low, high = min(sizes, key=min), max(sizes, key=min)
        print(f"  {klass.name:8} draft({size:4}): {low[1]}x{low[0]}..{high[1]}x{high[0]}")
        for name, method in (("plain", plain), ("full", emulated)):
            bits = [Pdq.distance(method(s.data), e) for s, e in zip(good, expected, strict=True)]
            rest = [b for s, b in zip(good, bits, strict=True) if not s.name.startswith("sea")]
            label = "pdqhash of the pixels   " if name == "plain" else "PDQ as of the full size"
            print(
                f"    {label} {rates[name]:6.1f} img/s, bits from baseline max {max(bits):2}"
                f" (without the sea {max(rest):2}), mean {statistics.mean(bits):4.1f}"
            )


# -- the run -------------------------------------------------------------------------------


def measure(klass: Klass, reps: int, pool: concurrent.futures.Executor) -> None:
    data = [s.data for s in klass.samples]
    r = klass.results
    methods = {"baseline": baseline, "ours": hash_media, "floor": floor}
    r.update(images_per_second(methods, data, reps))
    arrays, fallbacks = pdq_inputs(data)
    r["fallbacks"] = fallbacks
    r.update(images_per_second({"sha256+md5": exact_hashes}, data, reps))
    pdq_methods = {
        "pdq ours": our_pdq,
        "pdqhash dihedral": pdqhash_dihedral,
        "pdqhash compute": pdqhash_compute,
    }
    r.update(images_per_second(pdq_methods, arrays, reps))  # type: ignore[arg-type]
    r["pdq pixels"] = statistics.mean(a.array.shape[0] * a.array.shape[1] for a in arrays)
    r["processes"] = pooled(pool, data, reps)
    with concurrent.futures.ThreadPoolExecutor(2) as threads:
        r["threads"] = pooled(threads, data, reps)
    bits = distances(klass)
    worst = max(bits, key=bits.__getitem__)
    r["bits"] = bits[worst]
    r["bits without sea"] = max(v for k, v in bits.items() if not k.startswith("sea"))
    klass.pixels += f" -> PDQ on {r['pdq pixels'] / 1e6:.2f} MP"
    print(
        f"{klass.name:8} {len(data):2} images, decoded at {klass.pixels}:"
        f" baseline {r['baseline']:6.1f}/s  ours {r['ours']:6.1f}/s  floor {r['floor']:6.1f}/s"
        f"  2 processes {r['processes']:6.1f}/s  2 threads {r['threads']:6.1f}/s"
        f"  max bits {r['bits']} ({worst}), {r['bits without sea']} without the sea",
        flush=True,
    )


def where_the_time_goes(classes: list[Klass]) -> None:
    print(
        "\nWhere hash_media's time goes, ms per image (single core). PDQ: its PDQ step on"
        " the arrays it hashes;\npdqhash: pdqhash.compute_dihedral on the same arrays, and"
        " what its 7 extra variants cost over compute;\nrest: sniffing, EXIF, RGB, shrinking,"
        " hex; to pdqhash: arrays whose bits hash_media left to pdqhash."
    )
    print(
        f"{'class':8} {'total':>7} {'decode':>7} {'PDQ':>6} {'pdqhash':>8} {'(8 vs 1)':>9}"
        f" {'sha+md5':>8} {'rest':>6} {'to pdqhash':>10}"
    )
    for k in classes:
        r = k.results
        ms = {name: 1e3 / r[name] for name in ("ours", "floor", "pdq ours", "sha256+md5")}
        pdqhash_ms = 1e3 / r["pdqhash dihedral"]
        extra = pdqhash_ms - 1e3 / r["pdqhash compute"]
        rest = ms["ours"] - ms["floor"] - ms["pdq ours"] - ms["sha256+md5"]
        print(
            f"{k.name:8} {ms['ours']:7.2f} {ms['floor']:7.2f} {ms['pdq ours']:6.2f}"
            f" {pdqhash_ms:8.2f} {extra:+9.2f} {ms['sha256+md5']:8.2f} {rest:6.2f}"
            f" {r['fallbacks']:>4.0f} of {len(k.samples)}"
        )


def gil(classes: list[Klass], reps: int) -> None:
    """Which stages let a second thread run: speed-up of 2 threads over 1."""
    klass = next((k for k in classes if k.name == "jpeg-4"), classes[0])
    data = [s.data for s in klass.samples]
    arrays, _ = pdq_inputs(data)
    stages: dict[str, tuple[Callable[[object], object], list[object]]] = {
        "JPEG draft decode (Pillow)": (floor, list(data)),  # type: ignore[dict-item]
        "pdqhash.compute_dihedral": (pdqhash_dihedral, list(arrays)),  # type: ignore[dict-item]
        "hash_media's PDQ step": (our_pdq, list(arrays)),  # type: ignore[dict-item]
        "SHA-256 + MD5 (hashlib)": (exact_hashes, list(data)),  # type: ignore[dict-item]
        "hash_media": (hash_media, list(data)),  # type: ignore[dict-item]
    }
    print(f"\nGIL: speed-up of 2 threads over 1 thread, {klass.name} (2.0 = releases it):")
    for name, (function, items) in stages.items():
        print(f"  {name:28} x{two_threads(function, items, reps):.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=5)
    default = ",".join(
        [f"{fmt}-{mp}" for fmt in ("jpeg", "png") for mp in MEGAPIXELS] + ["camera-12"]
    )
    parser.add_argument("--classes", default=default)
    parser.add_argument("--scales", action="store_true", help="also try coarser draft scales")
    args = parser.parse_args()
    print(
        f"Python {sys.version.split()[0]}, Pillow {Image.__version__},"
        f" pdqhash {pdqhash.__version__}, numpy {np.__version__}, {os.cpu_count()} cores;"
        f" JPEG_HASH_SIZE {decode.JPEG_HASH_SIZE}, HASH_SIZE {decode.HASH_SIZE},"
        f" {args.reps} reps,"
        f" load average {os.getloadavg()[0]:.2f}"
    )
    started = time.perf_counter()
    classes = corpus(args.classes.split(","))
    print(f"corpus built in {time.perf_counter() - started:.1f} s\n", flush=True)
    with concurrent.futures.ProcessPoolExecutor(2) as pool:
        list(pool.map(hash_media, [classes[0].samples[0].data] * 2))  # start both workers
        for klass in classes:
            measure(klass, args.reps, pool)
    where_the_time_goes(classes)
    gil(classes, args.reps)
    mods = bridge_mods()
    print(
        f"\nbridge-mods: {len(mods)} edits, max {max(mods.values())} bits from the original"
        f" ({max(mods, key=mods.__getitem__)}); all match (<= {Pdq.threshold}):"
        f" {max(mods.values()) <= Pdq.threshold}"
    )
    if args.scales:
        print("\nDraft scales (JPEG decode + PDQ, no exact hashes, no EXIF):")
        for klass in classes:
            if klass.name.startswith("jpeg"):
                draft_scales(klass, args.reps)
    print(f"\nload average {os.getloadavg()[0]:.2f} at the end")
    print("\nRatios (single core unless said; ours/floor is a time ratio):")
    for k in classes:
        r = k.results
        target = f" (target x{TARGET_RATIO[k.name]:.0f})" if k.name in TARGET_RATIO else ""
        # The most hash_media could reach with a PDQ that cost nothing: decode + exact hashes.
        free_pdq = 1 / (1 / r["floor"] + 1 / r["sha256+md5"])
        print(
            f"{k.name:8} ours/baseline x{r['ours'] / r['baseline']:5.2f}{target}"
            f"  ours/floor x{r['floor'] / r['ours']:4.2f}"
            f"  2 processes/1 core x{r['processes'] / r['ours']:4.2f}"
            f"  2 threads/1 core x{r['threads'] / r['ours']:4.2f}"
            f"  max bits {r['bits']}"
            f"  ceiling with a free PDQ x{free_pdq / r['baseline']:5.2f}"
        )
    print("\nTargets:")
    for name, target in TARGET_RATIO.items():
        k = next((k for k in classes if k.name == name), None)
        if k:
            ratio = k.results["ours"] / k.results["baseline"]
            ok = _met(ratio >= target)
            print(f"  {name}: x{ratio:.2f} the baseline, target x{target:.0f}: {ok}")
    for k in classes:
        if k.name.startswith("jpeg"):
            over = k.results["floor"] / k.results["ours"]
            ok = _met(over <= TARGET_FLOOR)
            print(f"  {k.name}: ours/floor x{over:.2f}, target <= x{TARGET_FLOOR}: {ok}")
    for k in classes:
        bits, ok = k.results["bits"], _met(k.results["bits"] <= TARGET_BITS)
        print(f"  {k.name}: max {bits} bits from the baseline, target <= {TARGET_BITS}: {ok}")
    print(f"  bridge-mods all match: {_met(max(mods.values()) <= Pdq.threshold)}")


def _met(ok: bool) -> str:
    return "met" if ok else "MISSED"


if __name__ == "__main__":
    main()
