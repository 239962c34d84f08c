r"""Train the dataset classifier behind the FD-<dataset> metric and report its test accuracy.

  python -m eval.train_classifier --dataset=digits [--out=DIR] [--data_dir=DIR]
  python -m eval.train_classifier --dataset=fashion_mnist --steps=3000

Data comes from infra.sources (digits: scikit-learn's bundled copy; fashion_mnist:
the IDX files of `apt-get install dataset-fashion-mnist`). --out defaults to
~/.cache/diffusion_distillation_jax/classifiers/<dataset>.
"""
import time

from absl import app, flags

from eval import classifier

flags.DEFINE_string("dataset", "digits", "Dataset name (a infra.sources source).")
flags.DEFINE_string("out", None, "Output directory; default ~/.cache/diffusion_distillation_jax/"
                    "classifiers/<dataset>.")
flags.DEFINE_string("data_dir", "", "Where the dataset files are ('' = the source's default).")
flags.DEFINE_integer("steps", 500, "Optimizer steps.")
flags.DEFINE_integer("batch_size", 128, "Batch size.")
flags.DEFINE_float("learning_rate", 2e-3, "Peak learning rate (cosine decay to 0).")
flags.DEFINE_integer("seed", 0, "Random seed.")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  train_images, train_labels, num_classes = classifier.load_split(FLAGS.dataset, "train",
                                                                  FLAGS.data_dir)
  test_images, test_labels, _ = classifier.load_split(FLAGS.dataset, "test", FLAGS.data_dir)
  start = time.perf_counter()
  model, params = classifier.train_classifier(
      train_images, train_labels, num_classes, FLAGS.steps, FLAGS.batch_size,
      FLAGS.learning_rate, FLAGS.seed)
  seconds = time.perf_counter() - start
  acc = classifier.accuracy(model, params, test_images, test_labels)
  out = FLAGS.out or classifier.default_dir(FLAGS.dataset)
  classifier.save(out, model, params, dataset=FLAGS.dataset, test_accuracy=acc,
                  steps=FLAGS.steps, metric=classifier.metric_name(FLAGS.dataset))
  print(f"{FLAGS.dataset}: {len(train_labels)} train / {len(test_labels)} test images, "
        f"{FLAGS.steps} steps in {seconds:.1f} s, test accuracy {acc:.4f}; saved to {out}")


if __name__ == "__main__":
  app.run(main)
