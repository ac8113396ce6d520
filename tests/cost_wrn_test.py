"""The MicroNet CIFAR-100 baseline: WRN-28-10 counted by mntk.cost.

Layout that gives the challenge's 36,529,028 params (found by counting the
variants below by hand): depth 28 -> n = (28 - 4) / 6 = 4 blocks per group,
widths 16 -> 160 / 320 / 640, post-activation blocks
conv3x3-BN-ReLU-conv3x3-BN (+ shortcut) -> ReLU, with a 1x1 conv-BN shortcut
only where the shape changes (the first block of each group: 16->160,
160->320 stride 2, 320->640 stride 2), every conv bias-free with its BN
folded into a per-channel bias, GAP, Dense(100) with bias:
  stem 3*3*3*16 + 16                                    =        448
  group 1: 9*16*160+160 + 9*160*160+160 + 16*160+160 + 3*2*(9*160*160+160)
  group 2: 9*160*320+320 + 9*320*320+320 + 160*320+320 + 3*2*(9*320*320+320)
  group 3: 9*320*640+640 + 9*640*640+640 + 320*640+640 + 3*2*(9*640*640+640)
  head 640*100 + 100
  total                                                 = 36,529,028
(without the shortcut biases: 36,527,908; without the stem bias: 36,529,012).
Ops: conv mults k*k*cin*N, adds (k*k*cin - 1)*N + N (bias) = k*k*cin*N;
ReLU 1 mult per element; residual Add 1 add per element; GAP 640 mults +
63*640 adds; Dense 64,000 mults + 64,000 adds. Spatial 32x32 (group 1),
16x16, 8x8. Total 5,245,697,152 mults + 5,244,573,568 adds
= 10,490,270,720 ops, i.e. the 10.49e9 baseline.
"""
import pytest

from mntk.compat import keras
import mntk

L = keras.layers


def wrn_28_10(input_shape=(None, None, 3), classes=100):
    def conv_bn(x, filters, kernel, stride):
        x = L.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False)(x)
        return L.BatchNormalization()(x)

    inputs = keras.Input(input_shape)
    x = L.ReLU()(conv_bn(inputs, 16, 3, 1))
    channels = 16
    for group, width in enumerate((160, 320, 640)):
        for block in range(4):
            stride = 2 if group > 0 and block == 0 else 1
            y = L.ReLU()(conv_bn(x, width, 3, stride))
            y = conv_bn(y, width, 3, 1)
            shortcut = conv_bn(x, width, 1, stride) if channels != width else x
            x = L.ReLU()(L.Add()([y, shortcut]))
            channels = width
    x = L.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, L.Dense(classes)(x), name="wrn_28_10")


def hand_count():
    params = 27 * 16 + 16
    mults = adds = 0
    size, cin = 32, 16
    mults += 27 * 16 * size * size + 16 * size * size       # stem conv + ReLU
    adds += 27 * 16 * size * size
    for group, width in enumerate((160, 320, 640)):
        for block in range(4):
            if group > 0 and block == 0:
                size //= 2
            n = size * size * width
            params += 9 * cin * width + width + 9 * width * width + width
            mults += 9 * cin * n + n + 9 * width * n + n     # 2 convs, 2 ReLUs
            adds += 9 * cin * n + 9 * width * n + n          # 2 convs, residual add
            if cin != width:
                params += cin * width + width
                mults += cin * n
                adds += cin * n
            cin = width
    mults += 640 + 640 * 100
    adds += 63 * 640 + 640 * 100
    params += 640 * 100 + 100
    return params, mults, adds


@pytest.mark.slow
def test_wrn_28_10_is_the_cifar100_baseline():
    params, mults, adds = hand_count()
    assert (params, mults, adds) == (36_529_028, 5_245_697_152, 5_244_573_568)
    model = wrn_28_10()
    # A random float32 init of 36.5M weights holds a few exact zeros; storage
    # takes the cheaper (dense) encoding, so they change nothing.
    report = mntk.cost.estimate(model, input_shape=(32, 32, 3), task="cifar100")
    assert report.params == params
    assert report.raw_mults == mults
    assert report.raw_adds == adds
    assert report.ops == mults + adds
    assert report.ops == pytest.approx(10.49e9, rel=1e-3)
    # 36.529M / 36.5M + 10.4903G / 10.49G: the baseline scores ~2.
    assert report.score == pytest.approx(params / 36.5e6 + (mults + adds) / 10.49e9)
    assert report.score == pytest.approx(2.0, abs=2e-3)
    # Every BN is folded: 28 conv layers + 3 shortcuts, all "conv+bn".
    assert sum(r.kind == "conv+bn" for r in report.layers) == 28
    assert not any(r.kind == "bn" for r in report.layers)
    assert {r.encoding for r in report.layers if r.channels} == {"dense"}
