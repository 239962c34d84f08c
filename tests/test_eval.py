"""Evaluation library: Frechet distance, Inception Score, fidelity, sharded generation,
cached reference statistics and the dataset classifier behind FD-<dataset>."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh
from scipy import linalg

from eval import classifier, fidelity, frechet, generate, inception_score, metrics, reference


def random_spd(rng, dim):
  a = rng.standard_normal((dim, dim))
  return a @ a.T / dim + 0.1 * np.eye(dim)


# Frechet distance.

def test_frechet_closed_form_commuting_covariances():
  """S1 = Q diag(a) Q^T, S2 = Q diag(b) Q^T: FD = ||mu1 - mu2||^2 + sum (sqrt a - sqrt b)^2."""
  rng = np.random.default_rng(0)
  q, _ = np.linalg.qr(rng.standard_normal((6, 6)))
  a, b = rng.uniform(0.1, 3.0, 6), rng.uniform(0.1, 3.0, 6)
  mu1, mu2 = rng.standard_normal(6), rng.standard_normal(6)
  expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
  got = frechet.frechet_distance(mu1, (q * a) @ q.T, mu2, (q * b) @ q.T)
  np.testing.assert_allclose(got, expected, rtol=1e-10)
  diag = frechet.frechet_distance(mu1, np.diag(a), mu2, np.diag(b))
  np.testing.assert_allclose(diag, expected, rtol=1e-10)


def test_frechet_symmetric_and_matches_scipy_sqrtm():
  rng = np.random.default_rng(1)
  s1, s2 = random_spd(rng, 8), random_spd(rng, 8)
  mu1, mu2 = rng.standard_normal(8), rng.standard_normal(8)
  d12 = frechet.frechet_distance(mu1, s1, mu2, s2)
  d21 = frechet.frechet_distance(mu2, s2, mu1, s1)
  reference_value = (np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2)
                     - 2 * np.trace(linalg.sqrtm(s1 @ s2)).real)
  np.testing.assert_allclose(d12, d21, rtol=1e-10)
  np.testing.assert_allclose(d12, reference_value, rtol=1e-8)


def test_frechet_of_identical_features_is_zero_even_when_singular():
  """50 samples in 64 dimensions: a rank-49 covariance, still FD(X, X) = 0.

  The 15 zero eigenvalues come out as round-off ~1e-16 |S| whose square roots add up to
  ~1e-8 |S|: the sqrt(eps) floor of any matrix square root of a singular matrix.
  """
  features = np.random.default_rng(2).standard_normal((50, 64)).astype(np.float32)
  mu, sigma = frechet.statistics(features)
  assert abs(frechet.frechet_distance(mu, sigma, mu, sigma)) < 1e-6 * np.trace(sigma)
  assert abs(frechet.frechet_distance_of_features(features, features)) < 1e-6 * np.trace(sigma)


def test_streamed_moments_equal_numpy_cov():
  features = np.random.default_rng(3).standard_normal((103, 5)) * 10 + 50
  total = frechet.Moments(0, None, None)
  for start in range(0, 103, 17):
    total = frechet.merge(total, frechet.moments(features[start:start + 17]))
  mu, sigma = frechet.mean_cov(total)
  np.testing.assert_allclose(mu, features.mean(0), rtol=1e-12)
  np.testing.assert_allclose(sigma, np.cov(features, rowvar=False), rtol=1e-10)


def test_stats_file_round_trip(tmp_path):
  mu, sigma = np.arange(3.0), np.eye(3) * 2
  path = str(tmp_path / "sub" / "stats.npz")
  frechet.save_stats(path, mu, sigma)
  loaded_mu, loaded_sigma = frechet.load_stats(path)
  np.testing.assert_array_equal(loaded_mu, mu)
  np.testing.assert_array_equal(loaded_sigma, sigma)


def test_reference_stats_computed_once_then_cached(tmp_path):
  rng = np.random.default_rng(4)
  batches = [rng.uniform(-1, 1, (16, 4, 4, 1)).astype(np.float32) for _ in range(3)]
  feature_fn = lambda images: images.reshape(len(images), -1)[:, :6]  # noqa: E731
  path = str(tmp_path / "ref.npz")
  mu, sigma = reference.reference_stats(feature_fn, iter(batches), path)
  expected_mu, expected_sigma = frechet.statistics(np.concatenate([feature_fn(b) for b in batches]))
  np.testing.assert_allclose(mu, expected_mu, rtol=1e-10)
  np.testing.assert_allclose(sigma, expected_sigma, rtol=1e-10)

  def must_not_run(images):
    raise AssertionError("the cache should have been used")

  cached_mu, cached_sigma = reference.reference_stats(must_not_run, iter(batches), path)
  np.testing.assert_array_equal(cached_mu, mu)
  np.testing.assert_array_equal(cached_sigma, sigma)


# Inception Score.

def test_inception_score_uniform_is_one():
  mean, std = inception_score.inception_score(np.zeros((40, 1008)), splits=4)
  np.testing.assert_allclose(mean, 1.0, rtol=1e-12)
  assert std < 1e-12


def test_inception_score_confident_over_k_classes_is_k():
  k, num_classes = 5, 10
  labels = np.arange(50) % k                      # every chunk of 10 holds each class twice
  logits = 60.0 * np.eye(num_classes)[labels]     # p(y|x) one-hot up to e^-60
  mean, std = inception_score.inception_score(logits, splits=5)
  np.testing.assert_allclose(mean, k, rtol=1e-9)
  assert std < 1e-9


# Teacher-student fidelity.

def test_fidelity_identical_and_known_mse():
  teacher = jax.random.uniform(jax.random.key(0), (4, 8, 8, 3), minval=-1, maxval=1)
  same = fidelity.fidelity(teacher, teacher)
  assert float(same["mse"]) == 0.0 and np.isinf(same["psnr"]) and np.isinf(same["psnr_mean"])
  shifted = fidelity.fidelity(teacher + 0.1, teacher)
  np.testing.assert_allclose(shifted["mse"], 0.01, rtol=1e-5)
  np.testing.assert_allclose(shifted["psnr"], 10 * np.log10(4 / 0.01), rtol=1e-5)
  np.testing.assert_allclose(shifted["psnr_mean"], 10 * np.log10(400), rtol=1e-5)
  per_example = fidelity.mse_per_example(teacher.at[1].add(0.2), teacher)
  np.testing.assert_allclose(per_example, [0, 0.04, 0, 0], atol=1e-7)


# Sharded generation.

def sample_fn(rng, batch_size):
  return jax.random.normal(rng, (batch_size, 4, 4, 1))


def test_generate_same_on_one_and_eight_devices():
  rng = jax.random.key(7)
  meshes = [Mesh(np.asarray(jax.devices()[:n]), ("data",)) for n in (1, 8)]
  transform = jax.jit(lambda x: {"mean": jnp.mean(x, axis=(1, 2, 3)), "first": x[:, 0, 0, 0]})
  one, eight = (generate.generate(sample_fn, 20, 8, rng, mesh, transform) for mesh in meshes)
  assert one["mean"].shape == (20,) and isinstance(one["mean"], np.ndarray)
  np.testing.assert_array_equal(one["mean"], eight["mean"])
  np.testing.assert_array_equal(one["first"], eight["first"])
  images = generate.generate(sample_fn, 20, 8, rng, meshes[1])
  np.testing.assert_array_equal(images[8:16], sample_fn(jax.random.fold_in(rng, 1), 8))
  np.testing.assert_array_equal(images[:, 0, 0, 0], one["first"])
  with pytest.raises(ValueError, match="not divisible"):
    generate.generate(sample_fn, 20, 12, rng, meshes[1])


# The dataset classifier (FD-digits).

@pytest.fixture(scope="module")
def digits_classifier():
  train_images, train_labels, num_classes = classifier.load_split("digits", "train")
  model, params = classifier.train_classifier(
      train_images, train_labels, num_classes, steps=300, batch_size=64, learning_rate=3e-3,
      model=classifier.Classifier(num_classes, width=16, features=64))
  return model, params, train_images


def test_classifier_accuracy_on_digits(digits_classifier):
  model, params, _ = digits_classifier
  test_images, test_labels, _ = classifier.load_split("digits", "test")
  assert test_images.shape[1:] == (8, 8, 1) and -1 <= test_images.min() < test_images.max() <= 1
  assert classifier.accuracy(model, params, test_images, test_labels) > 0.9


def test_classifier_save_load_and_fd(digits_classifier, tmp_path):
  model, params, train_images = digits_classifier
  directory = str(tmp_path / "classifiers" / "digits")
  classifier.save(directory, model, params, dataset="digits")
  loaded_model, loaded_params, config = classifier.load(directory)
  assert loaded_model == model and config["dataset"] == "digits"
  test_images, _, _ = classifier.load_split("digits", "test")
  features = classifier.feature_fn(model, params)(test_images)
  np.testing.assert_array_equal(classifier.feature_fn(loaded_model, loaded_params)(test_images),
                                features)
  assert features.shape == (len(test_images), 64)
  train_features = classifier.feature_fn(model, params)(train_images)
  noise = np.random.default_rng(0).uniform(-1, 1, test_images.shape).astype(np.float32)
  noise_features = classifier.feature_fn(model, params)(noise)
  fd_data = frechet.frechet_distance_of_features(features, train_features)
  fd_noise = frechet.frechet_distance_of_features(features, noise_features)
  assert fd_data < 0.1 * fd_noise
  assert classifier.metric_name("digits") == "FD-digits"


def test_classifier_missing_directory_names_the_command(tmp_path):
  with pytest.raises(FileNotFoundError, match="python -m eval.train_classifier"):
    classifier.load(str(tmp_path / "none"))


def test_frechet_metric_of_a_sampler(digits_classifier):
  model, params, _ = digits_classifier
  test_images, _, _ = classifier.load_split("digits", "test")
  features = classifier.feature_fn(model, params)
  ref = frechet.statistics(features(test_images))
  mesh = Mesh(np.asarray(jax.devices()), ("data",))
  noise_fn = lambda rng, n: jax.random.uniform(rng, (n, 8, 8, 1), minval=-1, maxval=1)  # noqa: E731
  rng = jax.random.key(3)
  result = metrics.frechet_metric(noise_fn, 40, 8, rng, mesh, features, ref, "FD-digits")
  samples = generate.generate(noise_fn, 40, 8, rng, mesh)
  expected = frechet.frechet_distance(*frechet.statistics(features(samples)), *ref)
  assert set(result) == {"FD-digits"}
  np.testing.assert_allclose(result["FD-digits"], expected, rtol=1e-4)
