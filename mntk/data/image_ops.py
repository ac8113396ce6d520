"""The AutoAugment image operations on ``tf`` ops, matching PIL's arithmetic.

AutoAugment (Cubuk et al. 2019, arXiv 1805.09501) and Fast AutoAugment (Lim et
al. 2019, arXiv 1905.00397) define their operations by PIL calls, and the
MicroNet entries ran them through PIL. These functions reproduce those calls
on one ``(H, W, 3)`` image of pixel values 0..255 (float32 holding integers,
or uint8) inside ``tf.data`` maps, and return float32 integers 0..255:

- geometry: PIL's affine ``transform`` (output pixel centre (x+.5, y+.5)
  mapped through the matrix, nearest = floor of the source coordinate,
  PIL's a = -1 bicubic), outside pixels take ``fill``; ``rotate`` builds
  PIL's matrix about the image centre (counter-clockwise degrees);
- enhancers (``ImageEnhance``): ``blend(degenerate, image, factor) =
  floor(clip(d + factor * (x - d), 0, 255))`` with the degenerate image of
  each: grey (Color), the mean grey level (Contrast), black (Brightness),
  PIL's 3x3 SMOOTH filter (Sharpness);
- ``ImageOps``: autocontrast, equalize, invert, solarize, posterize;
- cutout: a filled square, corners inclusive as PIL's ``rectangle`` draws it.

No maintained library fits the pinned stack: tensorflow-addons is end-of-life
(and pins TensorFlow < 2.16), keras-cv needs Keras 3, tf-models-official pins
``tensorflow~=2.20.0`` (a second TensorFlow) and its ops are not PIL's.
"""
import math

import tensorflow as tf

__all__ = ["affine", "shear_x", "shear_y", "translate_x", "translate_y", "rotate",
           "grayscale", "blend", "color", "contrast", "brightness", "sharpness",
           "auto_contrast", "equalize", "invert", "solarize", "posterize", "cutout"]


def _f32(image):
    return tf.cast(image, tf.float32)


def affine(image, matrix, fill=0.0, resample="nearest"):
    """PIL ``Image.transform(size, AFFINE, matrix, resample, fillcolor=fill)``.

    Output pixel (x, y) samples the input at ``(a x' + b y' + c, d x' + e y' +
    f)`` with ``x' = x + 0.5``, ``y' = y + 0.5``; sources outside the image
    give ``fill`` (a number or one per channel).
    """
    image = _f32(image)
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    m = tf.cast(tf.convert_to_tensor(matrix), tf.float64)
    ys, xs = tf.meshgrid(tf.range(h, dtype=tf.float64) + 0.5,
                         tf.range(w, dtype=tf.float64) + 0.5, indexing="ij")
    xin = m[0] * xs + m[1] * ys + m[2]
    yin = m[3] * xs + m[4] * ys + m[5]
    wf, hf = tf.cast(w, tf.float64), tf.cast(h, tf.float64)
    inside = (xin >= 0) & (xin < wf) & (yin >= 0) & (yin < hf)
    fill = tf.broadcast_to(tf.cast(fill, tf.float32), [3])

    def at(yi, xi):
        yi = tf.clip_by_value(yi, 0, h - 1)
        xi = tf.clip_by_value(xi, 0, w - 1)
        return tf.gather_nd(image, tf.stack([yi, xi], axis=-1))

    if resample == "nearest":
        out = at(tf.cast(tf.floor(yin), tf.int32), tf.cast(tf.floor(xin), tf.int32))
    elif resample == "bicubic":
        # PIL Geometry.c: neighbours floor(v - .5) - 1 .. + 2 (clamped), cubic
        # p1 + d (p2 + d (p3 + d p4)) with a = -1, then truncation to uint8
        x, y = xin - 0.5, yin - 0.5
        x0, y0 = tf.floor(x), tf.floor(y)
        dx = tf.cast(x - x0, tf.float64)[..., None]
        dy = tf.cast(y - y0, tf.float64)[..., None]
        xi, yi = tf.cast(x0, tf.int32) - 1, tf.cast(y0, tf.int32) - 1

        def cubic(v1, v2, v3, v4, d):
            p2, p3 = -v1 + v3, 2.0 * (v1 - v2) + v3 - v4
            p4 = -v1 + v2 - v3 + v4
            return v2 + d * (p2 + d * (p3 + d * p4))

        rows = []
        for j in range(4):
            vals = [tf.cast(at(yi + j, xi + i), tf.float64) for i in range(4)]
            rows.append(cubic(*vals, dx))
        v = cubic(*rows, dy)
        out = tf.cast(tf.floor(tf.clip_by_value(v, 0.0, 255.0)), tf.float32)
    else:
        raise ValueError(f"affine: resample={resample!r}; use 'nearest' or 'bicubic'.")
    return tf.where(inside[..., None], out, fill)


def shear_x(image, v, fill=0.0, resample="nearest"):
    """PIL AFFINE (1, v, 0, 0, 1, 0): x_in = x + v y."""
    v = tf.cast(v, tf.float64)
    return affine(image, tf.stack([1.0, v, 0.0, 0.0, 1.0, 0.0]), fill, resample)


def shear_y(image, v, fill=0.0, resample="nearest"):
    """PIL AFFINE (1, 0, 0, v, 1, 0): y_in = v x + y."""
    v = tf.cast(v, tf.float64)
    return affine(image, tf.stack([1.0, 0.0, 0.0, v, 1.0, 0.0]), fill, resample)


def translate_x(image, pixels, fill=0.0):
    """PIL AFFINE (1, 0, t, 0, 1, 0): x_in = x + t (the content moves by -t)."""
    t = tf.cast(pixels, tf.float64)
    return affine(image, tf.stack([1.0, 0.0, t, 0.0, 1.0, 0.0]), fill)


def translate_y(image, pixels, fill=0.0):
    """PIL AFFINE (1, 0, 0, 0, 1, t): y_in = y + t."""
    t = tf.cast(pixels, tf.float64)
    return affine(image, tf.stack([1.0, 0.0, 0.0, 0.0, 1.0, t]), fill)


def rotate(image, degrees, fill=0.0):
    """PIL ``Image.rotate(degrees)``: counter-clockwise about (W/2, H/2),
    nearest, same size (matrix entries rounded to 15 decimals as PIL does)."""
    h = tf.cast(tf.shape(image)[0], tf.float64)
    w = tf.cast(tf.shape(image)[1], tf.float64)
    angle = -tf.cast(degrees, tf.float64) * (math.pi / 180.0)
    scale = 1e15
    a = tf.round(tf.cos(angle) * scale) / scale
    b = tf.round(tf.sin(angle) * scale) / scale
    cx, cy = w / 2.0, h / 2.0
    c = a * -cx + b * -cy + cx
    f = -b * -cx + a * -cy + cy
    return affine(image, tf.stack([a, b, c, -b, a, f]), fill)


def grayscale(image):
    """PIL RGB -> L: (19595 R + 38470 G + 7471 B + 2^15) >> 16 (ITU-R 601-2)."""
    rgb = tf.cast(tf.round(_f32(image)), tf.int32)
    lum = (rgb[..., 0] * 19595 + rgb[..., 1] * 38470 + rgb[..., 2] * 7471 + 32768) // 65536
    return tf.cast(lum, tf.float32)


def blend(degenerate, image, factor):
    """PIL ``Image.blend(degenerate, image, factor)`` on uint8 values:
    floor(clip(d + factor (x - d), 0, 255)), in float32 as PIL computes it."""
    d = _f32(degenerate)
    out = d + tf.cast(factor, tf.float32) * (_f32(image) - d)
    return tf.floor(tf.clip_by_value(out, 0.0, 255.0))


def color(image, factor):
    """``ImageEnhance.Color``: blend with the image's grey version."""
    grey = grayscale(image)[..., None]
    return blend(tf.broadcast_to(grey, tf.shape(image)), image, factor)


def contrast(image, factor):
    """``ImageEnhance.Contrast``: blend with a flat image at the mean grey
    level, rounded: int(mean(L) + 0.5)."""
    mean = tf.floor(tf.reduce_mean(tf.cast(grayscale(image), tf.float64)) + 0.5)
    flat = tf.fill(tf.shape(image), tf.cast(mean, tf.float32))
    return blend(flat, image, factor)


def brightness(image, factor):
    """``ImageEnhance.Brightness``: blend with black."""
    return blend(tf.zeros_like(_f32(image)), image, factor)


def _smooth(image):
    """PIL ``ImageFilter.SMOOTH`` (3x3 [1 1 1; 1 5 1; 1 1 1] / 13, rounded);
    the one-pixel border keeps its values."""
    x = _f32(image)
    kernel = tf.constant([[1, 1, 1], [1, 5, 1], [1, 1, 1]], tf.float32) / 13.0
    kernel = tf.tile(kernel[:, :, None, None], [1, 1, 3, 1])
    inner = tf.nn.depthwise_conv2d(x[None], kernel, [1, 1, 1, 1], "VALID")[0]
    inner = tf.floor(tf.clip_by_value(inner + 0.5, 0.0, 255.0))
    return tf.tensor_scatter_nd_update(x, _inner_indices(x), tf.reshape(inner, [-1, 3]))


def _inner_indices(x):
    h, w = tf.shape(x)[0], tf.shape(x)[1]
    ys, xs = tf.meshgrid(tf.range(1, h - 1), tf.range(1, w - 1), indexing="ij")
    return tf.reshape(tf.stack([ys, xs], axis=-1), [-1, 2])


def sharpness(image, factor):
    """``ImageEnhance.Sharpness``: blend with the SMOOTH-filtered image."""
    return blend(_smooth(image), image, factor)


def _per_channel_lut(image, lut_fn):
    x = tf.cast(tf.round(_f32(image)), tf.int32)
    channels = []
    for c in range(3):
        plane = x[..., c]
        hist = tf.math.bincount(tf.reshape(plane, [-1]), minlength=256, maxlength=256,
                                dtype=tf.int64)
        lut = lut_fn(hist)
        channels.append(tf.gather(lut, plane))
    return tf.cast(tf.stack(channels, axis=-1), tf.float32)


def auto_contrast(image):
    """``ImageOps.autocontrast`` (cutoff 0): per channel, lo..hi -> 0..255,
    lut(i) = clip(int(i * 255 / (hi - lo) - lo * 255 / (hi - lo))); flat
    channels unchanged."""
    def lut(hist):
        present = tf.where(hist > 0)[:, 0]
        lo = tf.cast(tf.reduce_min(present), tf.float64)
        hi = tf.cast(tf.reduce_max(present), tf.float64)
        i = tf.range(256, dtype=tf.float64)
        scale = 255.0 / tf.maximum(hi - lo, 1.0)
        stretched = tf.clip_by_value(tf.floor(i * scale - lo * scale), 0.0, 255.0)
        # int() truncates toward zero; negatives are clipped to 0 anyway
        return tf.cast(tf.where(hi > lo, stretched, i), tf.int32)
    return _per_channel_lut(image, lut)


def equalize(image):
    """``ImageOps.equalize``: per channel, step = (N - count of the last
    present level) // 256; lut(i) = (step // 2 + sum(hist[:i])) // step;
    unchanged when step is 0 (one level)."""
    def lut(hist):
        present = tf.boolean_mask(hist, hist > 0)
        step = (tf.reduce_sum(hist) - present[-1]) // 256
        before = tf.cumsum(hist, exclusive=True)
        mapped = (step // 2 + before) // tf.maximum(step, 1)
        out = tf.where(step > 0, tf.minimum(mapped, 255), tf.range(256, dtype=tf.int64))
        return tf.cast(out, tf.int32)
    return _per_channel_lut(image, lut)


def invert(image):
    return 255.0 - _f32(image)


def solarize(image, threshold):
    """``ImageOps.solarize``: values >= threshold become 255 - value."""
    x = _f32(image)
    return tf.where(x < tf.cast(threshold, tf.float32), x, 255.0 - x)


def posterize(image, bits):
    """``ImageOps.posterize``: keep the ``bits`` high bits of each value."""
    x = tf.cast(tf.round(_f32(image)), tf.int32)
    mask = -tf.bitwise.left_shift(1, 8 - tf.cast(bits, tf.int32))  # ~(2^(8-bits) - 1)
    return tf.cast(tf.bitwise.bitwise_and(x, mask), tf.float32)


def cutout(image, size, center, fill=(125.0, 123.0, 114.0)):
    """Fast AutoAugment's CutoutAbs: corner x0 = int(max(0, cx - size / 2)),
    x1 = min(W, x0 + size) (same for y), filled by PIL's ``rectangle``, which
    includes both int() corners. ``center`` = (cx, cy) in pixels."""
    x = _f32(image)
    h, w = tf.shape(x)[0], tf.shape(x)[1]
    size = tf.cast(size, tf.float64)
    cx, cy = tf.cast(center[0], tf.float64), tf.cast(center[1], tf.float64)
    zero = tf.constant(0.0, tf.float64)
    x0 = tf.floor(tf.maximum(zero, cx - size / 2.0))
    y0 = tf.floor(tf.maximum(zero, cy - size / 2.0))
    x1 = tf.floor(tf.minimum(tf.cast(w, tf.float64), x0 + size))
    y1 = tf.floor(tf.minimum(tf.cast(h, tf.float64), y0 + size))
    cols = tf.range(w, dtype=tf.float64)
    rows = tf.range(h, dtype=tf.float64)
    inside = ((rows[:, None] >= y0) & (rows[:, None] <= y1)
              & (cols[None, :] >= x0) & (cols[None, :] <= x1))
    fill = tf.broadcast_to(tf.cast(fill, tf.float32), [3])
    return tf.where(inside[..., None], fill, x)
