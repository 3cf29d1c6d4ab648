"""The gated convolutional encoder and decoder of the VAE (``--network conv``)."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from flowvi.app.vae import run_vae
from flowvi.train import train
from flowvi.vae.config import VAEConfig, make_vae
from flowvi.vae.networks import ConvBernoulliDecoder, ConvEncoder, GatedConv2d


def test_gated_convolution_is_value_times_sigmoid_gate():
    torch.manual_seed(0)
    layer = GatedConv2d(2, 3, 3, stride=2, padding=1).double()
    x = torch.randn(4, 2, 8, 8, dtype=torch.float64)
    w, b = layer.conv.weight, layer.conv.bias
    h = F.conv2d(x, w[:3], b[:3], stride=2, padding=1)
    g = F.conv2d(x, w[3:], b[3:], stride=2, padding=1)
    torch.testing.assert_close(layer(x), h / (1 + torch.exp(-g)))
    up = GatedConv2d(3, 2, 3, stride=2, padding=1, output_padding=1, transpose=True)
    assert up(layer(x).float()).shape == (4, 2, 8, 8)


@pytest.mark.parametrize(("side", "context"), [(28, 256), (8, 64)])
def test_shapes_through_encoder_and_decoder(side, context):
    encoder, decoder = ConvEncoder((1, side, side)), ConvBernoulliDecoder(5, (1, side, side))
    x = torch.bernoulli(torch.full((3, 2, side * side), 0.3))
    h = encoder(x)
    assert h.shape == (3, 2, context) and encoder.context_dim == context
    p = decoder(torch.randn(7, 3, 2, 5))
    assert p.batch_shape == (7, 3, 2) and p.event_shape == (side * side,)
    assert p.log_prob(x).shape == (7, 3, 2)
    # each image is decoded on its own: the batch layout does not mix images
    z = torch.randn(4, 5)
    torch.testing.assert_close(decoder(z).base_dist.logits[2], decoder(z[2:3]).base_dist.logits[0])
    torch.testing.assert_close(encoder(x[1, 0]), h[1, 0], atol=1e-6, rtol=1e-5)


def test_bias_start_predicts_the_mean_image():
    decoder = ConvBernoulliDecoder(3, (1, 8, 8))
    mean = torch.rand(64) * 0.8 + 0.1
    decoder.init_bias(mean)
    with torch.no_grad():
        decoder.net[-1].weight.zero_()
        decoder.net[-1].bias.zero_()
    torch.testing.assert_close(decoder(torch.randn(2, 3)).base_dist.probs[0], mean)


@pytest.mark.parametrize("shape", [(1, 16, 16), (1, 28, 14), (3, 5)])
def test_other_image_sizes_are_refused(shape):
    with pytest.raises(ValueError, match="image"):
        ConvEncoder(shape)
    with pytest.raises(ValueError, match="image"):
        ConvBernoulliDecoder(4, shape)


def test_make_vae_conv_refuses_non_square_and_unknown_network():
    with pytest.raises(ValueError, match="square"):
        make_vae(VAEConfig(network="conv"), 60)
    with pytest.raises(ValueError, match="network"):
        VAEConfig(network="resnet").validate()


@pytest.mark.parametrize("posterior", ["diagonal", "iaf"])
def test_one_training_step_on_28x28_lowers_the_loss_and_reaches_every_parameter(posterior):
    torch.manual_seed(0)
    model = make_vae(VAEConfig(network="conv", posterior=posterior, length=1, latent=8), 784)
    x = torch.bernoulli(torch.full((6, 784), 0.2))
    model.decoder.init_bias(x.mean(0))

    def loss_fn(t):
        torch.manual_seed(1)  # the same noise each step: the loss is a deterministic function
        bound = model.elbo(x)
        return -bound.mean(), {"bound": bound}

    before = float(loss_fn(0)[0].detach())
    loss = loss_fn(0)[0]
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    nets = [*model.encoder.parameters(), *model.decoder.parameters()]
    assert all(p.grad.abs().sum() > 0 for p in nets)  # (flow heads may start at zero)
    model.zero_grad()
    train(model, loss_fn, iters=3, lr=1e-3, progress=False)
    assert float(loss_fn(0)[0].detach()) < before


def test_conv_run_on_digits_trains_and_reloads(tmp_path):
    from flowvi.vae.config import load_vae

    config = VAEConfig(network="conv", posterior="planar", length=2, latent=4, epochs=1)
    summary = run_vae(config, tmp_path / "run", progress=False)
    assert summary["iterations"] == 13 and summary["valid_neg_elbo"] < 64 * 0.7
    model, loaded = load_vae(tmp_path / "run")
    assert loaded.network == "conv" and isinstance(model.encoder, ConvEncoder)
