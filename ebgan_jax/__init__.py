"""ebgan_jax: Energy-based Generative Adversarial Networks (Zhao, Mathieu & LeCun, ICLR 2017)."""

__version__ = '0.1.0'
