"""Which backbone activation clusters best? A prototype: the last block's
attention keys, queries and values and earlier blocks' outputs, against the
final patch tokens the runtime uses, each clustered by the whitened k-means
of tools/probe_experiments.py on the same leave-one-drive-out folds.

    python3 tools/backbone_layers.py extract            # ~10 min: ONNX Runtime, one thread
    KINDS="final key value" python3 tools/backbone_layers.py measure

`extract` adds the activations as outputs of the fetched backbone
(~/.cache/causeseg/dinov2_vits14_imgfocus.onnx), runs it on every CamVid
train + val image at 448x336 (stretched, ImageNet normalisation: the
runtime's preprocessing; the final tokens agree with `causeseg`'s cached
features to a cosine of 0.99999) and writes $TMPDIR/causeseg-backbone-layers.npz
(float16). `measure` prints mIoU / pixel accuracy (mean ± sd over seeds 0-2
of the three-fold mean) per kind; `a+b` concatenates unit-scaled kinds.
Python packages: numpy scipy pillow onnx onnxruntime.
"""
import os, sys
import numpy as np

CACHE = os.path.expanduser(os.environ.get('CAUSESEG_CACHE', '~/.cache/causeseg'))
OUT = os.path.join(os.environ.get('TMPDIR', '/tmp'), 'causeseg-backbone-layers.npz')
DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..', 'shared', 'data', 'camvid')
BLOCK = '/backbone/encoder/layer.{}'
KINDS = {
    'key': BLOCK.format(11) + '/attention/attention/key/Add_output_0',
    'query': BLOCK.format(11) + '/attention/attention/query/Add_output_0',
    'value': BLOCK.format(11) + '/attention/attention/value/Add_output_0',
    'out10': BLOCK.format(10) + '/Add_1_output_0',
    'out9': BLOCK.format(9) + '/Add_1_output_0',
}


def extract():
    import onnx, onnxruntime as ort
    from PIL import Image
    model = onnx.load(os.path.join(CACHE, 'dinov2_vits14_imgfocus.onnx'))
    for name in KINDS.values():
        model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(os.environ.get('THREADS', '1'))
    session = ort.InferenceSession(model.SerializeToString(), options, providers=['CPUExecutionProvider'])
    images = sorted(((split, os.path.splitext(f)[0]) for split in ('train', 'val') for f in os.listdir(f'{DATA}/{split}/images')), key=lambda x: x[1])
    mean, std = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)
    out = {k: np.zeros((len(images), 24, 32, 384), np.float16) for k in ['final', *KINDS]}
    for i, (split, stem) in enumerate(images):
        image = Image.open(f'{DATA}/{split}/images/{stem}.jpg').convert('RGB').resize((448, 336), Image.BILINEAR)
        x = ((np.asarray(image, np.float32) / 255 - mean) / std).transpose(2, 0, 1)[None]
        final, *rest = session.run(['patch_tokens', *KINDS.values()], {'input_image': x})
        out['final'][i] = final[0].reshape(24, 32, 384)
        for kind, a in zip(KINDS, rest):
            out[kind][i] = a[0, 1:].reshape(24, 32, 384)  # without the CLS token
        if i % 50 == 0:
            print(f'{i}/{len(images)}', flush=True)
    np.savez(OUT, stems=np.array([s for _, s in images]), **out)


def measure():
    sys.argv = sys.argv[:1]
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import probe_experiments as pe
    z = np.load(OUT)
    assert list(z['stems']) == pe.stems
    final = z['final'].astype(np.float32).reshape(-1, 384)
    cached = pe.F.reshape(-1, 384)
    cos = (final * cached).sum(1) / np.linalg.norm(final, axis=1) / np.linalg.norm(cached, axis=1)
    print(f'final tokens against causeseg\'s cache: cosine mean {cos.mean():.5f}, min {cos.min():.5f}', flush=True)
    for spec in os.environ.get('KINDS', 'final key value query out10 out9').split():
        parts = spec.split('+')
        G = np.concatenate([pe.unit(z[p].astype(np.float32)) if len(parts) > 1 else z[p].astype(np.float32) for p in parts], -1)

        def prep(tr, d=64, smooth=0, G=G):
            X = G[tr].reshape(-1, G.shape[-1])
            mu, P = pe.whiten_fit(X, d)
            return pe.unit((G - mu) @ P)
        pe.prep = prep
        print(spec, end=': ', flush=True)
        pe.run(pe.wkm_fast)


if __name__ == '__main__':
    {'extract': extract, 'measure': measure}[sys.argv[1]]()
