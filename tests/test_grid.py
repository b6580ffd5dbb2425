"""Sample grids for people (`snapgen.sampling.grid`): tiles upscaled by an integer (nearest) to >= 256 px within a
2048 px row, labelled rows."""

import numpy as np

from snapgen import sampling


def images(n, side, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, side, side, 3), dtype=np.uint8)


def test_tiles_are_upscaled_nearest_to_a_viewable_size():
    x = images(6, 16)
    grid = np.asarray(sampling.grid(x, 3))
    assert grid.shape == (2 * 256, 3 * 256, 3)  # 16 px -> 16x
    assert np.array_equal(grid[::16, ::16], np.concatenate([np.concatenate(list(x[r * 3:r * 3 + 3]), axis=1)
                                                            for r in range(2)]))


def test_wide_rows_stay_within_the_max_width_and_large_images_are_not_scaled():
    assert sampling.grid_scale(16, 16, 32) == 4 and np.asarray(sampling.grid(images(32, 16), 32)).shape[1] == 2048
    assert sampling.grid_scale(1024, 1024, 4) == 1 and sampling.grid_scale(300, 300, 1) == 1
    assert sampling.grid_scale(8, 8, 1000) == 1  # never below the images' own pixels


def test_rows_are_labelled_on_a_white_margin_and_long_labels_are_cut():
    x = images(4, 16)
    labelled = np.asarray(sampling.grid(x, 2, labels=["cat", "ship"]))
    margin = labelled.shape[1] - 2 * 256
    assert labelled.shape[0] == 2 * 256 and margin > 0
    assert np.array_equal(labelled[:, margin:], np.asarray(sampling.grid(x, 2)))  # the tiles are untouched
    label_area = labelled[:, :margin]
    assert (label_area < 128).any(axis=-1).any() and (label_area == 255).all(axis=-1).mean() > 0.8
    assert (label_area[:256] < 128).any() and (label_area[256:] < 128).any()  # one label per row
    long = np.asarray(sampling.grid(x, 2, labels=["a photo of " * 30, "ship"]))
    cut = np.asarray(sampling.grid(x, 2, labels=["a photo of " * 4, "ship"]))
    assert long.shape[1] - 512 <= cut.shape[1] - 512 + 40  # cut at MAX_LABEL_CHARS, not 330 characters wide
