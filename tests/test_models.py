"""The model zoo: sizes, learning, the hand-written autograd updates, the blobs, and every config."""

from __future__ import annotations

import copy
import pickle
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from helpers import REPO, quiet_trainer
from torch import nn

from lit_mnist import CNN, MLP, BlobsDataModule, DropoutMLP, LinearClassifier, ScratchMLP, SpeedrunCNN
from lit_mnist.__main__ import main
from lit_mnist.data import batch_loader, load_mnist
from lit_mnist.errors import LitMNISTError
from lit_mnist.models import KerasRMSprop, MNISTClassifier, mlp_network


def dense(n_in: int, n_out: int, bias: bool = True) -> int:
    """Parameters of a dense layer, with its bias or without."""
    return n_in * n_out + n_out * bias


def conv3x3(c_in: int, c_out: int, bias: bool = True) -> int:
    return 3 * 3 * c_in * c_out + c_out * bias


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    """64 real test digits, scaled as the data module scales them, and their labels."""
    images, labels = load_mnist(REPO / "data", train=False)
    return images[:64].unsqueeze(1).float() / 255, labels[:64]


SIZES = [
    pytest.param(MLP, 136_074, id="mlp-seed000"),
    pytest.param(lambda: MLP([512]), dense(784, 512) + dense(512, 10), id="mlp-dense512"),
    pytest.param(
        lambda: MLP([620], "sigmoid", init="tf1"),
        dense(784, 620, bias=False) + dense(620, 10, bias=False),
        id="mlp-fc_sigmoid",
    ),
    pytest.param(DropoutMLP, 101_770, id="dropout-seed003"),
    pytest.param(
        lambda: DropoutMLP([625, 625], [0.6, 0.0], init="tf1"),
        dense(784, 625, False) + dense(625, 625, False) + dense(625, 10, False),
        id="dropout-modern",
    ),
    pytest.param(
        CNN,
        conv3x3(1, 32, False)
        + conv3x3(32, 64, False)
        + conv3x3(64, 128, False)
        + dense(128 * 4 * 4, 625, False)
        + dense(625, 10, False),
        id="cnn",
    ),
    pytest.param(
        lambda: CNN(init="pytorch"),
        conv3x3(1, 32) + conv3x3(32, 64) + conv3x3(64, 128) + dense(128 * 4 * 4, 625) + dense(625, 10),
        id="cnn-pytorch-init",
    ),
    pytest.param(ScratchMLP, dense(784, 512) + dense(512, 10), id="scratch"),
    pytest.param(
        SpeedrunCNN,
        9 * (1 * 32 + 32 * 64 + 64 * 128) + 2 * (32 + 64 + 128) + dense(128 * 3 * 3, 10),  # no conv biases
        id="speedrun",
    ),
    pytest.param(LinearClassifier, dense(784, 10), id="linear-mnist"),
]


@pytest.mark.parametrize(("make", "n_params"), SIZES)
def test_mnist_model_size_and_output_shape(make: Callable[[], MNISTClassifier], n_params: int):
    model = make()
    assert sum(p.numel() for p in model.parameters()) == n_params
    assert tuple(model.example_input_array.shape) == (1, 1, 28, 28)
    assert model(torch.rand(3, 1, 28, 28)).shape == (3, 10)


@pytest.mark.parametrize("make", [pytest.param(p.values[0], id=p.id) for p in SIZES])
def test_every_model_pickles_as_serve_hands_it_to_its_workers(make: Callable[[], MNISTClassifier]):
    model = make()
    copy_of = pickle.loads(pickle.dumps(model))
    x = torch.rand(2, 1, 28, 28)
    assert torch.equal(copy_of.eval()(x), model.eval()(x))


def test_blobs_model_is_affine_2_to_1():
    model = LinearClassifier(num_inputs=2, num_outputs=1, loss="mse", lr=0.1)
    assert tuple(model.example_input_array.shape) == (1, 2)
    assert sum(p.numel() for p in model.parameters()) == 3
    x = torch.randn(5, 2)
    weight, bias = model.net[1].weight, model.net[1].bias
    torch.testing.assert_close(model(x), x @ weight.T + bias)


def _weights(net: nn.Module) -> list[nn.Linear | nn.Conv2d]:
    return [m for m in net.modules() if isinstance(m, nn.Linear | nn.Conv2d)]


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda init: MLP([512, 256], init=init).net, id="mlp"),
        pytest.param(lambda init: CNN(init=init).net, id="cnn"),
    ],
)
def test_each_init_draws_its_tutorials_distribution(make: Callable[[str], nn.Module]):
    torch.manual_seed(0)
    for layer in _weights(make("keras")):  # Glorot-uniform: U(±sqrt(6 / (fan_in + fan_out))), zero biases
        fan_in = layer.weight[0].numel()
        fan_out = layer.weight.shape[0] * layer.weight[0, 0].numel()
        limit = (6 / (fan_in + fan_out)) ** 0.5
        w = layer.weight.detach()
        assert w.abs().max() <= limit
        assert w.std().item() == pytest.approx(limit / 3**0.5, rel=0.15)
        assert not layer.bias.any()
    for layer in _weights(make("tf1")):  # N(0, 0.01), no biases
        assert layer.bias is None
        assert layer.weight.std().item() == pytest.approx(0.01, rel=0.15)
        assert abs(layer.weight.mean().item()) < 0.003
    for layer in _weights(make("pytorch")):  # PyTorch's U(±1/sqrt(fan_in)) weights and biases
        bound = 1 / layer.weight[0].numel() ** 0.5
        assert layer.weight.abs().max() <= bound
        assert layer.weight.std().item() == pytest.approx(bound / 3**0.5, rel=0.15)
        assert layer.bias is not None and layer.bias.abs().max() <= bound and layer.bias.any()


@pytest.mark.parametrize(
    ("config", "init"),
    [
        ("mlp", "keras"),
        ("dense512", "keras"),
        ("dropout", "keras"),
        ("fc_sigmoid", "tf1"),
        ("modern_mlp", "tf1"),
        ("cnn", "tf1"),
    ],
)
def test_every_tutorial_config_starts_as_its_tutorial(config: str, init: str):
    from lit_mnist.cli import LitMNISTCLI

    cli = LitMNISTCLI(
        args=["--config", str(REPO / "configs" / f"{config}.yaml"), "--trainer.logger", "false"], run=False
    )
    layers = _weights(cli.model.net)
    if init == "tf1":
        assert all(layer.bias is None for layer in layers)
        assert all(layer.weight.std().item() == pytest.approx(0.01, rel=0.2) for layer in layers)
    else:
        assert all(not layer.bias.any() for layer in layers)
        for layer in layers:
            limit = (6 / (layer.in_features + layer.out_features)) ** 0.5
            assert layer.weight.abs().max() <= limit
            assert layer.weight.abs().max() > 0.9 * limit


def _torch_nn_kinds(net: nn.Sequential) -> list[str]:
    """Each layer's torch.nn class name (``MaskDropout`` is an ``nn.Dropout``)."""
    return [next(c.__name__ for c in type(m).__mro__ if c.__module__.startswith("torch.nn")) for m in net]


def test_cnn_flattens_before_the_third_dropout():
    net = CNN().net
    kinds = _torch_nn_kinds(net)
    block = ["Conv2d", "ReLU", "MaxPool2d"]
    head = ["Flatten", "Linear", "ReLU", "Dropout", "Linear"]
    assert kinds == [*block, "Dropout", *block, "Dropout", *block, *head]
    assert [m.p for m in net if isinstance(m, nn.Dropout)] == [0.2, 0.2, 0.5]
    assert net[:11](torch.zeros(1, 1, 28, 28)).shape == (1, 128, 4, 4)


def test_modern_mlp_drops_after_the_first_hidden_layer_only():
    kinds = _torch_nn_kinds(DropoutMLP([625, 625], [0.6, 0.0]).net)
    assert kinds == ["Flatten", "Linear", "ReLU", "Dropout", "Linear", "ReLU", "Linear"]


def test_bad_shapes_are_refused():
    with pytest.raises(LitMNISTError, match="one drop probability per hidden layer"):
        mlp_network([625, 625], dropout=[0.6])
    with pytest.raises(LitMNISTError, match="mse"):
        LinearClassifier(num_outputs=10, loss="mse")


OVERFIT = [
    pytest.param(MLP, 20, id="mlp"),
    pytest.param(lambda: MLP([620], "sigmoid"), 20, id="mlp-sigmoid"),
    pytest.param(DropoutMLP, 20, id="dropout"),
    pytest.param(lambda: DropoutMLP([625, 625], [0.6, 0.0]), 20, id="dropout-modern"),
    pytest.param(CNN, 30, id="cnn"),  # N(0, 0.01) weights through five layers: near-zero logits at first
    # one-cycle warm-up, and batch-norm statistics that the evaluated loss uses catch up slowly
    pytest.param(SpeedrunCNN, 40, id="speedrun"),
    pytest.param(ScratchMLP, 20, id="scratch"),  # the tutorial's lr 1e-3
    pytest.param(lambda: LinearClassifier(lr=0.5), 20, id="linear-mnist"),
]


@pytest.mark.parametrize(("make", "steps"), OVERFIT)
def test_loss_on_64_digits_halves_in_a_few_dozen_steps(
    make: Callable[[], MNISTClassifier], steps: int, digits
):
    x, y = digits
    torch.manual_seed(0)
    model = make()

    def loss() -> float:
        model.eval()
        with torch.no_grad():
            value = model.compute_loss(model(x), y).item()
        model.train()
        return value

    before = loss()
    trainer = quiet_trainer(max_steps=steps, max_epochs=steps)
    trainer.fit(model, batch_loader(x, y, batch_size=64))
    assert trainer.global_step == steps
    assert loss() < before / 2


def test_linear_classifier_reproduces_seed_004_on_the_blobs():
    """40 full-batch steps of lr 0.1: the tutorial's loss of about 0.025, above 99 % of points right."""
    torch.manual_seed(0)
    model = LinearClassifier(num_inputs=2, num_outputs=1, loss="mse", lr=0.1, uniform_init=True)
    trainer = quiet_trainer(max_epochs=40, log_every_n_steps=1)
    trainer.fit(model, BlobsDataModule(seed=0))
    assert trainer.global_step == 40
    assert trainer.callback_metrics["val/loss"] < 0.029  # Keras today: 0.0268
    assert trainer.callback_metrics["val/acc"] >= 0.99


HAND_MODELS = [
    pytest.param(lambda: ScratchMLP(lr=1e-3), "digits", id="scratch"),
    pytest.param(lambda: LinearClassifier(lr=0.05), "digits", id="linear-mnist"),
    pytest.param(lambda: LinearClassifier(2, 1, "mse", lr=0.1), "blobs", id="linear-blobs"),
]


@pytest.mark.parametrize(("make", "data"), HAND_MODELS)
def test_hand_update_is_one_sgd_step(make: Callable[[], MNISTClassifier], data: str, digits):
    x, y = digits if data == "digits" else BlobsDataModule(num_points_per_class=32).points
    torch.manual_seed(0)
    model = make()
    initial = [p.detach().clone() for p in model.parameters()]
    reference = copy.deepcopy(model)
    optimizer = torch.optim.SGD(reference.parameters(), lr=model.lr)
    reference.compute_loss(reference(x), y).backward()
    optimizer.step()

    trainer = quiet_trainer(max_steps=1, max_epochs=1)
    trainer.fit(model, batch_loader(x, y, batch_size=len(y)))

    assert trainer.global_step == 1
    for (name, p), q in zip(model.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7, msg=name)
    assert all(not torch.equal(p, p0) for p, p0 in zip(model.parameters(), initial, strict=True))


def test_hand_update_runs_under_bf16_autocast(digits):
    x, y = digits
    model = ScratchMLP()
    start = [p.detach().clone() for p in model.parameters()]
    quiet_trainer(max_steps=2, max_epochs=1, precision="bf16-mixed").fit(
        model, batch_loader(x, y, batch_size=32)
    )
    for p, p0 in zip(model.parameters(), start, strict=True):
        assert p.dtype == torch.float32
        assert not torch.equal(p, p0)


def test_scratch_loss_is_keras_cross_entropy_on_probabilities():
    model = ScratchMLP()
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.0, 1.0, 0.0]])
    labels = torch.tensor([0, 0])
    clipped = probs.clamp(1e-7, 1 - 1e-7)
    keras = -(clipped / clipped.sum(1, keepdim=True))[torch.arange(2), labels].log().mean()
    torch.testing.assert_close(model.compute_loss(probs, labels), keras)
    assert model.probabilities(probs) is probs


def test_mse_score_above_half_is_class_one():
    model = LinearClassifier(num_inputs=2, num_outputs=1, loss="mse")
    scores = torch.tensor([[0.7], [0.3], [-0.2], [1.3]])
    probs = model.probabilities(scores)
    assert probs.argmax(dim=-1).tolist() == [1, 0, 0, 1]
    torch.testing.assert_close(probs.sum(dim=-1), torch.ones(4))
    assert ((probs >= 0) & (probs <= 1)).all()


def test_blobs_are_the_seeds_clouds_and_seeded():
    data = BlobsDataModule(seed=0)
    points, labels = data.points
    assert points.shape == (2000, 2) and points.dtype == torch.float32
    assert labels.tolist() == [0] * 1000 + [1] * 1000
    torch.testing.assert_close(points[:1000].mean(0), torch.tensor([0.0, 3.0]), atol=0.1, rtol=0)
    torch.testing.assert_close(points[1000:].mean(0), torch.tensor([3.0, 0.0]), atol=0.1, rtol=0)
    centred = points[:1000] - points[:1000].mean(0)
    torch.testing.assert_close(
        centred.T @ centred / 999, torch.tensor([[1.0, 0.5], [0.5, 1.0]]), atol=0.1, rtol=0
    )
    assert torch.equal(BlobsDataModule(seed=0).points[0], points)
    assert not torch.equal(BlobsDataModule(seed=1).points[0], points)


def test_blobs_batches_are_the_whole_set_unscaled():
    data = BlobsDataModule(seed=0)
    for loader in (data.train_dataloader(), data.val_dataloader(), data.predict_dataloader()):
        (x, y), *more = list(loader)
        assert not more
        assert x.shape == (2000, 2) and y.shape == (2000,)
    x, y = next(iter(data.val_dataloader()))
    assert torch.equal(x, data.points[0])
    batch = data.on_after_batch_transfer((x, y), 0)
    assert torch.equal(batch[0], x)


MODEL_CONFIGS = sorted(p.name for p in (REPO / "configs").glob("*.yaml"))
TRAINER_CONFIGS = sorted(
    p.name
    for p in (REPO / "configs" / "trainer").glob("*.yaml")
    if "ddp" not in p.name and "multinode" not in p.name
)  # the DDP configs run in test_ddp.py and test_multinode.py
#: Each trainer config is composed onto one model config, so every YAML runs without paying a
#: process start for each trainer config alone; gpu and tpu run with the accelerator set to cpu.
TRAINER_FOR = {
    "mlp.yaml": "cpu.yaml",
    "cnn.yaml": "cpu_bf16.yaml",
    "modern_mlp.yaml": "gpu.yaml",
    "scratch.yaml": "tpu.yaml",
}


def test_every_seed_model_and_trainer_has_a_config():
    tutorials = {
        "mlp",
        "linear_blobs",
        "linear",
        "dense512",
        "fc_sigmoid",
        "dropout",
        "modern_mlp",
        "cnn",
        "scratch",
    }
    assert {Path(name).stem for name in MODEL_CONFIGS} >= tutorials
    assert (
        sorted(TRAINER_FOR.values())
        == TRAINER_CONFIGS
        == ["cpu.yaml", "cpu_bf16.yaml", "gpu.yaml", "tpu.yaml"]
    )


@pytest.mark.parametrize("config", MODEL_CONFIGS)
def test_config_runs(
    config: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
):
    """``fit`` with ``fast_dev_run``: one training and one validation batch, then the test batch.

    In this process, to spare a process start per config: the command line's own process is
    tested in test_cli.py.
    """
    monkeypatch.chdir(REPO)
    args = ["--config", f"configs/{config}"]
    trainer = TRAINER_FOR.get(config)
    if trainer is not None:
        args += ["--config", f"configs/trainer/{trainer}"]
        if not trainer.startswith("cpu"):
            args.append("--trainer.accelerator=cpu")
    main(["fit", *args, "--trainer.fast_dev_run=true", "--trainer.logger=false",
          f"--trainer.default_root_dir={tmp_path}"])  # fmt: skip
    assert "Test accuracy" in capsys.readouterr().out


def test_keras_rmsprop_puts_epsilon_under_the_square_root():
    """Two steps against Keras' formula written out, and against PyTorch's RMSprop where epsilon vanishes."""
    grads = [torch.tensor([0.5, -1e-4, 0.0, 2.0]), torch.tensor([-0.25, 3e-4, 1e-3, 2.0])]
    lr, rho, eps = 0.01, 0.9, 1e-7
    param = nn.Parameter(torch.ones(4, dtype=torch.float64))
    optimizer = KerasRMSprop([param], lr=lr, rho=rho, eps=eps)
    expected, square_avg = torch.ones(4, dtype=torch.float64), torch.zeros(4, dtype=torch.float64)
    for grad in grads:
        param.grad = grad.double()
        optimizer.step()
        square_avg = rho * square_avg + (1 - rho) * grad.double() ** 2
        expected -= lr * grad.double() / torch.sqrt(square_avg + eps)
    torch.testing.assert_close(param.detach(), expected, rtol=1e-12, atol=0)

    ours, theirs = (nn.Parameter(torch.ones(4, dtype=torch.float64)) for _ in range(2))
    optimizers = (
        KerasRMSprop([ours], lr=lr, rho=rho, eps=1e-30),
        torch.optim.RMSprop([theirs], lr=lr, alpha=rho, eps=1e-30),
    )
    for grad in grads[1:]:
        for p, opt in zip((ours, theirs), optimizers, strict=True):
            p.grad = grad.double()
            opt.step()
    torch.testing.assert_close(ours.detach(), theirs.detach(), rtol=1e-12, atol=0)


@pytest.mark.parametrize("options", [{"lr": -1.0}, {"rho": 1.0}, {"eps": 0.0}])
def test_keras_rmsprop_refuses_bad_settings(options):
    with pytest.raises(LitMNISTError, match="KerasRMSprop takes"):
        KerasRMSprop([nn.Parameter(torch.ones(1))], **options)
