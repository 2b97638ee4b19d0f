"""save_pretrained / from_pretrained (issue 13, item 3): config.json + model.safetensors round trips, and one-line
errors naming the file for missing, corrupt, truncated or mismatched folders."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

import mone
from mone import MoneVisionTransformer, create_model, from_pretrained, list_models, save_pretrained


def small(name: str, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    args = dict(img_size=16, patch_size=4, depth=2)
    if "vivit" in name:
        args.update(num_frames=4, temporal_depth=1)
    model = create_model(name, **{**args, **kwargs})
    with torch.no_grad():
        for param in model.parameters():  # off the init, so a parameter left behind shows
            param.add_(0.01 * torch.randn_like(param))
    return model.eval()


def outputs(model: torch.nn.Module, capacity=None) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(2, *model.default_input_size, generator=generator, dtype=model.pos_embed.dtype)
    with torch.no_grad():
        return model(x) if capacity is None else model(x, capacity=capacity)


@pytest.mark.parametrize("name", list_models())
def test_round_trip_of_every_registered_model(name, tmp_path):
    model = small(name)
    assert model.save_pretrained(tmp_path) == tmp_path
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]  # no temporary files
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architecture"] == name and config["model_args"] == json.loads(json.dumps(model.model_args))
    assert config["num_classes"] == model.num_classes and config["num_features"] == model.num_features
    loaded = from_pretrained(tmp_path)
    assert type(loaded) is type(model) and not loaded.training
    assert loaded.pretrained_cfg == model.pretrained_cfg
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    capacity = 0.5 if "mod_" not in name else 0.25
    assert torch.equal(outputs(loaded, capacity), outputs(model, capacity))
    assert torch.equal(outputs(loaded), outputs(model))  # the default capacity too


NON_DEFAULT = {
    "mone_vit_test": dict(img_size=24, patch_size=6, in_chans=2, num_classes=7, embed_dim=48, depth=3, num_heads=3,
                          mlp_ratio=2.0, qkv_bias=False, num_experts=3, capacity=0.6, beta=5.0, delta=3.0,
                          router_block=1, class_token=True, reg_tokens=2, global_pool="token"),
    "mone_vivit_test": dict(img_size=16, patch_size=4, in_chans=1, num_classes=5, embed_dim=32, depth=2, num_heads=2,
                            num_experts=2, capacity=0.75, num_frames=4, tubelet_size=1, temporal_depth=2),
}


@pytest.mark.parametrize("name", sorted(NON_DEFAULT))
def test_round_trip_keeps_every_non_default_setting(name, tmp_path):
    # Every constructor argument away from its default: a loader that drops one (num_experts, say) builds another
    # model, whose weights do not fit or whose outputs differ.
    model = small(name, **NON_DEFAULT[name])
    for key, value in NON_DEFAULT[name].items():
        assert model.model_args[key] == value, key
    save_pretrained(model, tmp_path)
    loaded = from_pretrained(tmp_path)
    assert loaded.model_args == model.model_args and loaded.num_experts == NON_DEFAULT[name]["num_experts"]
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert torch.equal(outputs(loaded), outputs(model))  # at the saved default capacity
    assert torch.equal(outputs(loaded, 0.5), outputs(model, 0.5))


def test_the_weights_file_is_plain_safetensors(tmp_path):
    model = small("mone_vit_test")
    save_pretrained(model, tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), framework="pt") as handle:  # no pickle involved
        assert set(handle.keys()) == set(model.state_dict())
        assert handle.metadata() == {"format": "pt"}
    header_size = int.from_bytes((tmp_path / "model.safetensors").read_bytes()[:8], "little")
    assert header_size > 0


def test_current_settings_are_saved(tmp_path):
    model = small("mone_vit_test", capacity=0.5)
    model.set_capacity((0.25, 0.25, 0.25, 0.25))
    model.reset_classifier(4)
    model.set_router("random")
    save_pretrained(model, tmp_path)
    loaded = from_pretrained(tmp_path)
    assert loaded.distribution == model.distribution and loaded.num_classes == 4 and loaded.router_mode == "random"
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_float64_and_a_converted_timm_model(tmp_path):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", img_size=32, depth=2, reg_tokens=2, num_classes=3).double()
    model = mone.from_timm(vit, capacity=0.5).eval()
    save_pretrained(model, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architecture"] == "MoneVisionTransformer"  # not a registered name: the class rebuilds it
    loaded = from_pretrained(tmp_path)
    assert loaded.pos_embed.dtype == torch.float64 and loaded.num_prefix_tokens == 3
    assert loaded.pretrained_cfg["mean"] == vit.pretrained_cfg["mean"]  # the weights' preprocessing survives
    assert torch.equal(outputs(loaded), outputs(model))


def test_timm_loads_a_registered_model_folder(tmp_path):
    timm = pytest.importorskip("timm")
    model = small("mone_vit_test")
    save_pretrained(model, tmp_path)
    loaded = timm.create_model(f"local-dir:{tmp_path}", pretrained=True).eval()
    assert torch.equal(outputs(loaded, 0.5), outputs(model, 0.5))


def test_saving_over_another_model_or_a_file_is_refused(tmp_path):
    # the rule of mone export: a new or empty folder only; what is there stays as it was
    save_pretrained(small("mone_vit_test", num_classes=3), tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(ValueError, match=f"output folder {tmp_path} exists and is not empty; refusing to overwrite"):
        save_pretrained(small("mone_vit_test", num_classes=7), tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    (tmp_path / "afile").write_text("x")
    with pytest.raises(NotADirectoryError, match="afile is a file, not a folder"):
        save_pretrained(small("mone_vit_test"), tmp_path / "afile")


@pytest.mark.parametrize("failing", ["weights", "config"])
def test_a_full_disk_names_the_file_and_leaves_no_folder(tmp_path, monkeypatch, failing):
    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    if failing == "weights":
        monkeypatch.setattr(mone.hub, "save_file", full)
    else:
        monkeypatch.setattr(mone.hub.Path, "write_text", full)
    out = tmp_path / "new" / "model"
    name = "model.safetensors" if failing == "weights" else "config.json"
    with pytest.raises(OSError, match=f"^cannot write {out / name}: No space left on device$"):
        save_pretrained(small("mone_vit_test"), out)
    assert not out.exists()  # no empty folder, no temporary files
    assert list((tmp_path / "new").iterdir()) == []


def test_a_config_larger_than_its_weights_is_refused_before_allocating(tmp_path):
    # embed_dim 10**9 would need 768 GB: the model is built on the meta device and compared with the file's header
    save_pretrained(small("mone_vit_test"), tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["model_args"].update(embed_dim=10**6, num_heads=1)  # 3 TB of qkv weights alone
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"model.safetensors does not match .*config.json \(mone_vit_test\): "
                                         r"pos_embed has shape \(1, 16, 64\), the model needs \(1, 16, 1000000\)"):
        from_pretrained(tmp_path)
    config["model_args"].update(embed_dim=10**9)  # more bytes than torch can even count
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"config.json does not describe a model: Storage size calculation overflow"):
        from_pretrained(tmp_path)


def test_non_finite_weights_are_refused(tmp_path):
    model = small("mone_vit_test")
    with torch.no_grad():
        for param in model.parameters():
            param.fill_(float("nan"))
    save_pretrained(model, tmp_path)
    with pytest.raises(ValueError, match=r"model.safetensors holds non-finite weights \(alpha has NaN or inf"):
        from_pretrained(tmp_path)


def test_timm_local_dir_checks_the_folder_before_allocating(tmp_path):
    timm = pytest.importorskip("timm")
    save_pretrained(small("mone_vit_test"), tmp_path / "big")
    config = json.loads((tmp_path / "big" / "config.json").read_text())
    config["model_args"].update(embed_dim=10**6, num_heads=1)
    (tmp_path / "big" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"does not match .*: pos_embed has shape \(1, 16, 64\)"):
        timm.create_model(f"local-dir:{tmp_path / 'big'}", pretrained=True)
    nan = small("mone_vit_test")
    with torch.no_grad():
        nan.head.weight.fill_(float("nan"))
    save_pretrained(nan, tmp_path / "nan")
    with pytest.raises(ValueError, match=r"holds non-finite weights \(head.weight has NaN or inf values\)"):
        timm.create_model(f"local-dir:{tmp_path / 'nan'}", pretrained=True)


def test_models_the_config_cannot_rebuild_are_refused(tmp_path):
    model = small("mone_vit_test", depth=3)
    model.prune_intermediate_layers(indices=[1])  # two blocks left; the recorded depth is 3
    with pytest.raises(ValueError, match="its config does not rebuild it"):
        save_pretrained(model, tmp_path)
    with pytest.raises(ValueError, match="save_pretrained saves mone models, got a Linear"):
        save_pretrained(torch.nn.Linear(2, 2), tmp_path)
    assert not any(tmp_path.iterdir())


# -- broken folders: one line, naming the file --------------------------------------------------------------------

@pytest.fixture
def saved(tmp_path):
    save_pretrained(small("mone_vit_test"), tmp_path)
    return tmp_path


def one_line(error: pytest.ExceptionInfo, path) -> str:
    message = str(error.value)
    assert "\n" not in message and str(path) in message, message
    return message


def edit_config(folder, **changes):
    config = json.loads((folder / "config.json").read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key)
        elif key == "model_args":
            config[key].update(value)
        else:
            config[key] = value
    (folder / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("name", ["config.json", "model.safetensors"])
def test_missing_file(saved, name):
    (saved / name).unlink()
    with pytest.raises(FileNotFoundError, match="does not exist") as error:
        from_pretrained(saved)
    one_line(error, saved / name)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty", "binary"])
def test_corrupt_or_truncated_config(saved, damage):
    path = saved / "config.json"
    text = path.read_text()
    if damage == "garbage":
        path.write_text("{architecture: mone_vit_test")
    elif damage == "truncated":
        path.write_text(text[: len(text) // 2])
    elif damage == "empty":
        path.write_text("")
    else:
        path.write_bytes(b"\xff\xfe\x00\x80" * 8)
    with pytest.raises(ValueError, match="is corrupt or truncated|is not a text file") as error:
        from_pretrained(saved)
    one_line(error, path)


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(architecture=None), "is not a model config: it needs 'architecture'"),
        (dict(model_args=None), "is not a model config"),
        (dict(architecture="vit_nope"), "does not describe a model: unknown architecture 'vit_nope'"),
        (dict(model_args={"depth": "two"}), "does not describe a model: depth must be an integer >= 1"),
        (dict(model_args={"wings": 2}), "does not describe a model: model mone_vit_test does not take that argument"),
    ],
)
def test_config_that_describes_no_model(saved, changes, message):
    edit_config(saved, **changes)
    with pytest.raises(ValueError, match=message) as error:
        from_pretrained(saved)
    one_line(error, saved / "config.json")


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty", "header_only"])
def test_corrupt_or_truncated_weights(saved, damage):
    path = saved / "model.safetensors"
    data = path.read_bytes()
    if damage == "garbage":
        path.write_bytes(b"not a safetensors file at all" * 10)
    elif damage == "truncated":
        path.write_bytes(data[: len(data) - 100])
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        path.write_bytes(data[:8])
    with pytest.raises(ValueError, match="is corrupt or truncated, not a readable safetensors file") as error:
        from_pretrained(saved)
    one_line(error, path)


@pytest.mark.parametrize(
    "model_args, message",
    [
        ({"depth": 3}, r"missing \['blocks.2.attn.proj.bias'"),  # a config for more blocks than the weights hold
        ({"embed_dim": 32, "num_heads": 2}, r"pos_embed has shape \(1, 16, 64\), the model needs \(1, 16, 32\)"),
        ({"num_classes": 4}, r"head.weight has shape \(10, 64\), the model needs \(4, 64\)"),
    ],
)
def test_weights_that_do_not_match_the_config(saved, model_args, message):
    edit_config(saved, model_args=model_args)
    with pytest.raises(ValueError, match=f"does not match .*config.json \\(mone_vit_test\\): {message}") as error:
        from_pretrained(saved)
    one_line(error, saved / "model.safetensors")


def test_direct_construction_saves_by_class_name(tmp_path):
    torch.manual_seed(0)
    model = MoneVisionTransformer(img_size=16, patch_size=4, embed_dim=32, depth=1, num_heads=2, num_classes=3,
                                  class_token=True, global_pool="token").eval()
    save_pretrained(model, tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["architecture"] == "MoneVisionTransformer"
    assert torch.equal(outputs(from_pretrained(tmp_path), 0.5), outputs(model, 0.5))
