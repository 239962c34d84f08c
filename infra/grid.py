"""Image grids: a batch of images in [-1, 1] -> one uint8 picture, saved as PNG (to any
etils.epath path: a local file or a bucket)."""
import io
import math

import numpy as np
from etils import epath
from PIL import Image


def to_uint8(images):
  """[-1, 1] floats -> 0..255 uint8, clipped."""
  return np.asarray(np.clip(np.round((np.asarray(images) + 1.0) * 127.5), 0, 255), np.uint8)


def make_grid(images, columns: int = 0, pad: int = 1):
  """(N, H, W, C) in [-1, 1] -> (rows*(H+pad)+pad, cols*(W+pad)+pad, C) uint8 grid."""
  images = to_uint8(images)
  n, h, w, c = images.shape
  columns = columns or math.ceil(math.sqrt(n))
  rows = math.ceil(n / columns)
  grid = np.zeros((rows * (h + pad) + pad, columns * (w + pad) + pad, c), np.uint8)
  for i, image in enumerate(images):
    r, col = divmod(i, columns)
    grid[pad + r * (h + pad):pad + r * (h + pad) + h, pad + col * (w + pad):pad + col * (w + pad) + w] = image
  return grid


def save_grid(images, path: str, scale: int = 0):
  """Save a grid PNG; small images are upscaled (nearest) so a person can see them."""
  grid = make_grid(images)
  scale = scale or max(1, 256 // grid.shape[0])
  picture = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
  picture = picture.resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST)
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  png = io.BytesIO()
  picture.save(png, format="PNG")
  path.write_bytes(png.getvalue())
  return path
