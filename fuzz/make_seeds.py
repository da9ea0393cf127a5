#!/usr/bin/env python3
"""Writes the seed corpus of every fuzz target into fuzz/seeds/<target>/.

Only the Python standard library: PNGs through zlib, JPEGs through a small
baseline encoder below (DC-only 8x8 blocks, enough to reach every stage of
a decoder), .npy headers, ONNX protobuf and ROS 2 CDR bytes written by hand.
Nothing is copied from ../shared or elsewhere. Deterministic: running it
again rewrites the same files (tests/fuzz.sh runs it when seeds/ is absent).
"""
import os
import struct
import sys
import zlib

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "seeds")


def put(target, name, data):
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


def pixel(x, y, w, h):
    """A gradient with a disc: varied but compressible."""
    inside = (x - w / 2) ** 2 + (y - h / 2) ** 2 < (min(w, h) / 3) ** 2
    return (x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), 40 if inside else 200)


# ---- PNG -------------------------------------------------------------------

def png_chunk(kind, body):
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def png(w, h, color_type, depth=8, interlace=False, filter_type=0):
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[color_type]

    def sample(x, y):
        r, g, b = pixel(x, y, w, h)
        if color_type == 0:
            vals = [(r + g + b) // 3]
        elif color_type == 2:
            vals = [r, g, b]
        elif color_type == 3:
            vals = [(x + y) % 4]
        elif color_type == 4:
            vals = [(r + g + b) // 3, 255 - x % 256]
        else:
            vals = [r, g, b, 128 + y % 128]
        out = b""
        for v in vals:
            out += struct.pack(">H", v * 257) if depth == 16 else bytes([v])
        return out

    def rows(xs, ys):
        raw = b""
        for y in ys:
            line = b"".join(sample(x, y) for x in xs)
            if filter_type == 1:  # Sub
                bpp = max(1, channels * depth // 8)
                line = bytes((line[i] - (line[i - bpp] if i >= bpp else 0)) & 0xFF for i in range(len(line)))
            raw += bytes([filter_type]) + line
        return raw

    if interlace:
        raw = b""
        for x0, y0, dx, dy in [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]:
            xs, ys = list(range(x0, w, dx)), list(range(y0, h, dy))
            if xs and ys:
                raw += rows(xs, ys)
    else:
        raw = rows(range(w), range(h))
    out = b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, color_type, 0, 0, 1 if interlace else 0))
    if color_type == 3:
        out += png_chunk(b"PLTE", bytes([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255]))
    return out + png_chunk(b"IDAT", zlib.compress(raw, 9)) + png_chunk(b"IEND", b"")


# ---- JPEG (baseline, DC-only blocks) ----------------------------------------

class Bits:
    def __init__(self):
        self.out, self.acc, self.n = bytearray(), 0, 0

    def put(self, value, length):
        for i in reversed(range(length)):
            self.acc = (self.acc << 1) | ((value >> i) & 1)
            self.n += 1
            if self.n == 8:
                self.out.append(self.acc)
                if self.acc == 0xFF:
                    self.out.append(0)  # byte stuffing
                self.acc, self.n = 0, 0

    def flush(self):
        while self.n:
            self.put(1, 1)
        return bytes(self.out)


def segment(marker, body):
    return bytes([0xFF, marker]) + struct.pack(">H", len(body) + 2) + body


def jpeg(w, h, sampling=((1, 1), (1, 1), (1, 1))):
    """A baseline JPEG whose 8x8 blocks are flat (DC only): quantisation 1,
    DC Huffman table of 12 four-bit codes (category = code), AC table with
    only end-of-block (code '0'). Grey when `sampling` has one component."""
    ncomp = len(sampling)
    hmax, vmax = max(s[0] for s in sampling), max(s[1] for s in sampling)
    out = b"\xff\xd8"
    out += segment(0xDB, bytes([0]) + bytes([1] * 64))  # DQT 0: all ones
    sof = struct.pack(">BHHB", 8, h, w, ncomp)
    for i, (hs, vs) in enumerate(sampling):
        sof += bytes([i + 1, (hs << 4) | vs, 0])
    out += segment(0xC0, sof)
    out += segment(0xC4, bytes([0x00]) + bytes([0, 0, 0, 12] + [0] * 12) + bytes(range(12)))  # DC 0
    out += segment(0xC4, bytes([0x10]) + bytes([1] + [0] * 15) + bytes([0]))  # AC 0: EOB
    sos = bytes([ncomp]) + b"".join(bytes([i + 1, 0x00]) for i in range(ncomp)) + bytes([0, 63, 0])
    out += segment(0xDA, sos)
    bits = Bits()
    pred = [0] * ncomp
    mcus_x, mcus_y = -(-w // (8 * hmax)), -(-h // (8 * vmax))
    for my in range(mcus_y):
        for mx in range(mcus_x):
            for c, (hs, vs) in enumerate(sampling):
                for by in range(vs):
                    for bx in range(hs):
                        # Centre of this block in image pixels.
                        px = min(w - 1, (mx * hs + bx) * 8 * hmax // hs + 4)
                        py = min(h - 1, (my * vs + by) * 8 * vmax // vs + 4)
                        r, g, b = pixel(px, py, w, h)
                        y = 0.299 * r + 0.587 * g + 0.114 * b
                        v = [y, 128 - 0.1687 * r - 0.3313 * g + 0.5 * b, 128 + 0.5 * r - 0.4187 * g - 0.0813 * b][c] if ncomp == 3 else y
                        dc = int(round(8 * (v - 128)))
                        diff, pred[c] = dc - pred[c], dc
                        cat = abs(diff).bit_length()
                        bits.put(cat, 4)
                        if cat:
                            bits.put(diff if diff > 0 else diff + (1 << cat) - 1, cat)
                        bits.put(0, 1)  # end of block
    return out + bits.flush() + b"\xff\xd9"


# ---- npy, ONNX, CDR ---------------------------------------------------------

def npy(shape, values=None, descr="<f4", fortran=False):
    count = 1
    for n in shape:
        count *= n
    values = values if values is not None else [((i * 37) % 17 - 8) / 8.0 for i in range(count)]
    fmt = {"<f4": "<%df", "<f8": "<%dd", "<i4": "<%di", "|u1": "%dB", ">f4": ">%df"}[descr]
    vals = [int(v) % 256 for v in values] if descr == "|u1" else [int(v) for v in values] if descr == "<i4" else values
    body = struct.pack(fmt % count, *vals)
    shape_text = "(%s)" % ("".join("%d, " % n for n in shape) if len(shape) != 1 else "%d," % shape[0])
    header = "{'descr': '%s', 'fortran_order': %s, 'shape': %s, }" % (descr, "True" if fortran else "False", shape_text)
    header += " " * ((64 - (10 + len(header) + 1) % 64) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + body


def varint(n):
    n &= (1 << 64) - 1
    out = b""
    while True:
        byte, n = n & 0x7F, n >> 7
        out += bytes([byte | (0x80 if n else 0)])
        if not n:
            return out


def field(number, value):
    """One protobuf field: int → varint, bytes/str → length-delimited."""
    if isinstance(value, int):
        return varint(number << 3) + varint(value)
    data = value.encode() if isinstance(value, str) else value
    return varint(number << 3 | 2) + varint(len(data)) + data


def value_info(name, dims):
    shape = b"".join(field(1, field(1, d) if isinstance(d, int) else field(2, d)) for d in dims)
    return field(1, name) + field(2, field(1, field(1, 1) + field(2, shape)))


def tensor(name, dims, floats=None, ints=None):
    out = b"".join(field(1, d) for d in dims)
    if ints is not None:
        return out + field(2, 7) + field(8, name) + field(9, struct.pack("<%dq" % len(ints), *ints))
    return out + field(2, 1) + field(8, name) + field(9, struct.pack("<%df" % len(floats), *floats))


def attr_ints(name, values):
    return field(1, name) + b"".join(field(8, v) for v in values) + field(20, 7)


def attr_int(name, value):
    return field(1, name) + field(3, value) + field(20, 2)


def attr_float(name, value):
    return field(1, name) + varint(2 << 3 | 5) + struct.pack("<f", value) + field(20, 1)


def node(op, inputs, outputs, attrs=()):
    return b"".join(field(1, i) for i in inputs) + b"".join(field(2, o) for o in outputs) + field(3, outputs[0] + "_node") + field(4, op) + b"".join(field(5, a) for a in attrs)


def vit(dim=4, patch=14, cls=True):
    """A toy ViT: patch-embedding Conv, tokens, a CLS token, LayerNorm."""
    weights = [((i * 7) % 11 - 5) / 50.0 for i in range(dim * 3 * patch * patch)]
    nodes = [
        node("Conv", ["pixel_values", "patch_w"], ["embed"], [attr_ints("kernel_shape", [patch, patch]), attr_ints("strides", [patch, patch])]),
        node("Reshape", ["embed", "flat_shape"], ["flat"]),
        node("Transpose", ["flat"], ["tokens"], [attr_ints("perm", [0, 2, 1])]),
    ]
    inits = [tensor("patch_w", [dim, 3, patch, patch], weights), tensor("flat_shape", [3], ints=[1, dim, -1]),
             tensor("ln_scale", [dim], [1.0] * dim), tensor("ln_bias", [dim], [0.0] * dim)]
    last = "tokens"
    if cls:
        nodes.append(node("Concat", ["cls", "tokens"], ["with_cls"], [attr_int("axis", 1)]))
        inits.append(tensor("cls", [1, 1, dim], [0.5] * dim))
        last = "with_cls"
    nodes.append(node("LayerNormalization", [last, "ln_scale", "ln_bias"], ["last_hidden"], [attr_int("axis", -1), attr_float("epsilon", 1e-6)]))
    graph = b"".join(field(1, n) for n in nodes) + field(2, "toy_vit") + b"".join(field(5, t) for t in inits)
    graph += field(11, value_info("pixel_values", [1, 3, "height", "width"])) + field(12, value_info("last_hidden", [1, "tokens", dim]))
    return field(1, 8) + field(7, graph) + field(8, field(1, "") + field(2, 17))


def cdr_string(out, text):
    while len(out) % 4:
        out += b"\0"
    data = text.encode() + b"\0"
    return out + struct.pack("<I", len(data)) + data


def cdr_header(sec, nanosec, frame_id):
    return cdr_string(struct.pack("<iI", sec, nanosec), frame_id)


def cdr_image(width, height, encoding, step, data, frame_id="camera"):
    out = cdr_header(1_718_000_000, 5, frame_id)
    while len(out) % 4:
        out += b"\0"
    out += struct.pack("<II", height, width)
    out = cdr_string(out, encoding)
    out += bytes([0])  # is_bigendian
    while len(out) % 4:
        out += b"\0"
    return out + struct.pack("<II", step, len(data)) + data


def cdr_compressed(fmt, data):
    out = cdr_string(cdr_header(7, 9, "camera"), fmt)
    while len(out) % 4:
        out += b"\0"
    return out + struct.pack("<I", len(data)) + data


# ---- per target ---------------------------------------------------------------

MANIFEST = """format_version = 1
name = "fuzz-seed"
description = "a seed for the fuzzer"

[backbone]
file = "toy_vit.onnx"
sha256 = "00"
patch_size = 14
feature_dim = {dim}

[input]
width = 224
height = 168
mean = [0.485, 0.456, 0.406]
std = [0.229, 0.224, 0.225]
resize = "{resize}"

[concepts]
centroids = "centroids.npy"
names = ["sky", "road", "car"]
colors = [[70, 130, 180], [128, 64, 128], [0, 0, 142]]
{head}"""

MLP_HEAD = """
[head]
kind = "mlp"
dir = "head"
output_dim = 5
"""


def records(files):
    out = b""
    for name, data in files:
        name = name.encode()
        out += bytes([len(name)]) + name + struct.pack("<H", len(data)) + data
    return out


def main():
    # decode_frame: settings byte, then the encoded frame.
    frames = {
        "rgb_40x30.png": png(40, 30, 2),
        "grey_20x15.png": png(20, 15, 0),
        "rgba_16x16_sub.png": png(16, 16, 6, filter_type=1),
        "palette_15x14.png": png(15, 14, 3),
        "grey16_14x14.png": png(14, 14, 0, depth=16),
        "greyalpha_9x30.png": png(9, 30, 4),
        "interlaced_30x20.png": png(30, 20, 2, interlace=True),
        "tiny_1x1.png": png(1, 1, 2),
        "colour_32x24.jpg": jpeg(32, 24),
        "colour420_48x32.jpg": jpeg(48, 32, ((2, 2), (1, 1), (1, 1))),
        "grey_16x16.jpg": jpeg(16, 16, ((1, 1),)),
        "colour422_30x17.jpg": jpeg(30, 17, ((2, 1), (1, 1), (1, 1))),
    }
    for i, (name, data) in enumerate(sorted(frames.items())):
        put("decode_frame", name, bytes([i * 37 % 256]) + data)
    put("decode_frame", "truncated.jpg", bytes([1]) + frames["colour_32x24.jpg"][:-40])
    put("decode_frame", "text.txt", b"\x05not an image at all")

    # manifest: model.toml text.
    put("manifest", "plain.toml", MANIFEST.format(dim=4, resize="stretch", head=""))
    put("manifest", "mlp_head.toml", MANIFEST.format(dim=4, resize="letterbox", head=MLP_HEAD))
    put("manifest", "tr_head.toml", MANIFEST.format(dim=384, resize="center-crop", head=MLP_HEAD.replace("mlp", "tr") + 'clusterbook = "clusterbook.npy"\n'))
    put("manifest", "version2.toml", MANIFEST.format(dim=4, resize="stretch", head="").replace("format_version = 1", "format_version = 2"))
    put("manifest", "no_colours.toml", MANIFEST.format(dim=4, resize="stretch", head="").replace("colors = [[70, 130, 180], [128, 64, 128], [0, 0, 142]]", "colors = []"))

    # model_dir: records of files.
    plain = MANIFEST.format(dim=4, resize="stretch", head="").encode()
    mlp = MANIFEST.format(dim=4, resize="stretch", head=MLP_HEAD).encode()
    put("model_dir", "plain", records([("model.toml", plain), ("centroids.npy", npy((3, 4)))]))
    put("model_dir", "f64_centroids", records([("model.toml", plain), ("centroids.npy", npy((3, 4), descr="<f8"))]))
    put("model_dir", "int_centroids", records([("model.toml", plain), ("centroids.npy", npy((3, 4), descr="<i4"))]))
    put("model_dir", "bigendian_centroids", records([("model.toml", plain), ("centroids.npy", npy((3, 4), descr=">f4"))]))
    put("model_dir", "fortran_centroids", records([("model.toml", plain), ("centroids.npy", npy((3, 4), fortran=True))]))
    put("model_dir", "3d_centroids", records([("model.toml", plain), ("centroids.npy", npy((3, 2, 2)))]))
    put("model_dir", "wrong_shape", records([("model.toml", plain), ("centroids.npy", npy((4, 3)))]))
    head = [("head/f1_weight.npy", npy((5, 4))), ("head/f1_bias.npy", npy((5,))), ("head/f2a_weight.npy", npy((6, 4))),
            ("head/f2a_bias.npy", npy((6,))), ("head/f2b_weight.npy", npy((5, 6))), ("head/f2b_bias.npy", npy((5,)))]
    put("model_dir", "mlp_head", records([("model.toml", mlp), ("centroids.npy", npy((3, 5)))] + head))
    bad_head = head[:2] + [("head/f2a_weight.npy", npy((6, 3)))] + head[3:]
    put("model_dir", "mlp_head_mismatch", records([("model.toml", mlp), ("centroids.npy", npy((3, 5)))] + bad_head))

    # onnx_backbone: pick byte, then the model.
    put("onnx_backbone", "vit_cls", bytes([0x80]) + vit())
    put("onnx_backbone", "vit_no_cls", bytes([0x00]) + vit(cls=False))
    put("onnx_backbone", "vit_cut_early", bytes([0x02]) + vit(dim=2))
    put("onnx_backbone", "vit_patch16", bytes([0x80]) + vit(dim=2, patch=16))

    # source_uri: --source text.
    for i, text in enumerate(["auto", "/dev/video0", "v4l2:///dev/video12", "csi://1", "gst://videotestsrc ! videoconvert",
                              "rtsp://cam.local:8554/stream", "https://example.com/a.mjpg", "frames/*.png", "file:///tmp",
                              "/tmp", "clip.mp4", "ros2:///camera/image_raw", "ros2://image/compressed", "ros2://~/image",
                              "ftp://x", "/dev/video", "csi://x"]):
        put("source_uri", "uri%02d" % i, text)

    # ros2_image: mode byte, then CDR or a structured message.
    put("ros2_image", "cdr_rgb8", bytes([0]) + cdr_image(2, 2, "rgb8", 6, bytes(range(12))))
    put("ros2_image", "cdr_yuyv_padded", bytes([0]) + cdr_image(4, 2, "yuyv", 10, bytes(range(20))))
    put("ros2_image", "cdr_mono8", bytes([0]) + cdr_image(3, 1, "mono8", 3, b"\x01\x02\x03", frame_id=""))
    put("ros2_image", "cdr_compressed_png", bytes([1]) + cdr_compressed("png", png(4, 3, 2)))
    put("ros2_image", "cdr_compressed_jpeg", bytes([1]) + cdr_compressed("bgr8; jpeg compressed bgr8", jpeg(16, 8)))
    sizes = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1, "yuv422": 2, "yuyv": 2}
    encodings = ["rgb8", "bgr8", "rgba8", "bgra8", "mono8", "8UC1", "8UC3", "8UC4", "yuv422", "uyvy", "yuv422_yuy2", "yuyv", "mono16", ""]
    for name, bpp in sizes.items():
        w, h = 4, 3
        step = w * bpp + 3  # padded rows
        k = encodings.index(name)
        mode = 2 * k if k else 2 * len(encodings)  # modes 0 and 1 are CDR
        put("ros2_image", "raw_" + name, bytes([mode]) + struct.pack("<HHH", w, h, step) + bytes((i * 13) % 256 for i in range(step * h)))

    # preview_http: settings byte, then the request.
    requests = [
        (0, b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"),
        (0, b"GET /healthz HTTP/1.1\r\n\r\n"),
        (0, b"GET /stats HTTP/1.1\r\n\r\n"),
        (0, b"GET /concepts HTTP/1.1\r\n\r\n"),
        (0, b"GET /stream.mjpg?view=overlay&alpha=0.3 HTTP/1.1\r\n\r\n"),
        (0, b"GET /stream.mjpg?view=nope HTTP/1.1\r\n\r\n"),
        (0, b'POST /concepts HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 40\r\n\r\n{"id": 1, "name": "road", "color": "#8'),
        (0, b'PUT /concepts HTTP/1.1\r\nContent-Length: 35\r\n\r\n{"id": 1, "name": "road", "x": "y"}'),
        (1, b"GET /concepts?token=s3cret HTTP/1.1\r\n\r\n"),
        (1, b"GET /stats HTTP/1.1\r\nAuthorization: Bearer s3cret\r\n\r\n"),
        (2, b'POST /concepts HTTP/1.1\r\nContent-Length: 25\r\n\r\n{"id": 0, "name": "sky"}\n'),
        (0, b"DELETE /concepts HTTP/1.1\r\n\r\n"),
        (0, b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        (0, b"GET /%7e?a=%41%zz+b&c HTTP/1.1\r\n\r\n"),
    ]
    for i, (settings, request) in enumerate(requests):
        put("preview_http", "req%02d" % i, bytes([settings]) + request)
    print("seeds written to", ROOT, file=sys.stderr)


if __name__ == "__main__":
    main()
