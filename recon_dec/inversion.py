"""Reconstruction ("inversion") nets of Section 4.2: a SAE/SWWAE-first
decoder starting from one encoder layer, trained with the encoder frozen
and the image loss only. One directory per starting point:
``recon/<variant>/layer<k>/`` with train_val, deploy, solver and plan.json
(the authors publish theirs as ``<net>/recon/<variant>/layer<k>``).

VGG16 ("macro" points): layers 1-5 = pool1..pool5 with fixed (sae-first)
and known (swwae-first) switches, layers 6-8 = fc6..fc8 with known switches.
AlexNet ("layer" points): layer 1-8 = conv1 (pool1), conv2 (pool2), conv3,
conv4, conv5 (pool5), fc6, fc7, fc8 with known switches."""
import json
import os

from . import decoders, encoder as encoder_mod, solvers
from .decoders import KNOWN, FIXED
from .errors import ReconDecError


def start_points(enc, mode):
    """[(kind, macro, layer name)]: kind "macro" decodes from a macro-layer's
    output (after its pool), "conv" from inside a macro-layer, "fc" from an
    inner product's output."""
    pts = []
    for m in enc.macros:
        convs = m.convs if mode == "layer" else [m.last_conv]
        for c in convs:
            pts.append(("macro" if c is m.last_conv else "conv", m, c.name))
    for ip in enc.fc_layers:
        pts.append(("fc", None, ip.name))
    return pts


def decoder_from(enc, point, unpool):
    """(decoder layers, image blob, encoder blob it starts from)."""
    kind, macro, name = point
    if kind == "macro":
        layers, outs = decoders.chain(enc, unpool, top_macro=macro.index)
        return layers, outs[-1].blob, macro.output_blob
    if kind == "conv":
        layers, outs = decoders.chain(enc, unpool, top_macro=macro.index, from_conv=name)
        return layers, outs[-1].blob, enc.layer(name).top
    start = enc.layer(name).top
    fc_layers, blob = decoders.mirror_fc(enc, name, start)
    layers, outs = decoders.chain(enc, unpool, in_blob=blob)
    return fc_layers + layers, outs[-1].blob, start


def recon_net(enc, point, unpool, opts, deploy=False):
    from . import generate
    layers, image, start = decoder_from(enc, point, unpool)
    if image != "dec:data":
        raise ReconDecError(f"{enc.path}: the decoder from {point[2]} does not end at the image")
    enc_layers = encoder_mod.encoder_layers(enc, True, upto=start, masks=(unpool == KNOWN), dropout=False)
    name = f"recon-{'swwae' if unpool == KNOWN else 'sae'}-first-from-{point[2]}"
    if deploy:
        return generate._net(name, [generate.input_layer(enc, opts.deploy_batch or enc.input_shape[0])]
                             + enc_layers + layers)
    settings = solvers.stage_settings("recon", opts.stage)
    net = generate.data_layers(enc, opts, settings["batch"]) + [generate.scaled_data()]
    net += enc_layers + layers
    net.append(decoders.euclidean_loss(decoders.IMAGE_TARGET, image, decoders.IMAGE_TARGET, 1.0))
    net.append(decoders.layer("label/silence", "Silence", ["label"], []))  # the label is not used
    return generate._net(name, net)


def build(enc, opts, mode, pretrained):
    """{"files": {relative path: text}, "plans": {variant/layerK/plan.json: ...},
    "describe": {...}} for every inversion net."""
    files, plans, describe = {}, {}, {}
    pts = start_points(enc, mode)
    settings = solvers.stage_settings("recon", opts.stage)
    for variant, unpool in (("sae-first", FIXED), ("swwae-first", KNOWN)):
        for k, point in enumerate(pts, 1):
            if unpool == FIXED and (mode == "layer" or point[0] == "fc"):
                continue  # fixed switches: VGG's conv macro-layers only (as in Section 4.2)
            d = f"{variant}/layer{k}"
            train = recon_net(enc, point, unpool, opts)
            files[f"{d}/train_val.prototxt"] = str(train)
            files[f"{d}/deploy.prototxt"] = str(recon_net(enc, point, unpool, opts, deploy=True))
            test_iter = opts.test_iter if opts.val_source else None
            files[f"{d}/solver.prototxt"] = solvers.solver_text(
                "train_val.prototxt", settings, "snapshots/recon", test_iter, opts.test_interval, opts.solver_mode)
            enc_names = [l.name for l in train.layer if not l.name.startswith("dec:")
                         and l.type in ("Convolution", "InnerProduct", "BatchNorm", "Scale")]
            dec_names = [l.name for l in train.layer if l.name.startswith("dec:") and len(l.param)]
            plan = {"format": "recon-dec-plan/1", "variant": f"recon/{variant}/layer{k}",
                    "source_net": os.path.abspath(enc.path), "pretrained": pretrained,
                    "stages": [{
                        "step": 3, "name": "recon-decoder",
                        "description": f"{variant} decoder from {point[2]}, encoder frozen (Section 4.2)",
                        "solver": "solver.prototxt", "train_net": "train_val.prototxt",
                        "init": ([{"weights": "@pretrained", "layers": enc_names}] if pretrained else []),
                        "requires": [], "snapshot_prefix": "snapshots/recon",
                        "max_iter": int(settings["max_iter"]),
                        "output": solvers.stage_output("recon", settings["max_iter"]),
                        "decoder_layers": dec_names,
                    }]}
            files[f"{d}/plan.json"] = json.dumps(plan, indent=2) + "\n"
            plans[f"{d}/plan.json"] = f"{d}/plan.json"
            describe[f"{d}/plan.json"] = f"{variant} from {point[2]}"
    return {"files": files, "plans": plans, "describe": describe, "pretrained": pretrained}
