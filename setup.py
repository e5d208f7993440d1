from setuptools import find_packages, setup

# `kernels/` installs as `loci_fast.kernels`: a top-level `kernels` would clash with a PyPI package.
PACKAGES = find_packages(include=["loci_fast", "loci_fast.*"]) + ["loci_fast.kernels"]

setup(
    name="loci-fast",
    version="0.1.0",
    description="Fast training and evaluation of Loci-Segmented: fused Triton kernels, DeepSpeed, webdataset shards",
    python_requires=">=3.10",
    packages=PACKAGES,
    package_dir={"loci_fast.kernels": "kernels"},
    # The playground's page (MANIFEST.in puts the same files in an sdist).
    package_data={"loci_fast.playground": ["static/*.html", "static/*.js", "static/*.css"]},
    # Ranges, not pins (requirements.txt pins): each admits torch 2.13.0 and the GPU image's 2.11.
    install_requires=[
        "torch>=2.4",
        "numpy>=1.24",
        "einops>=0.7",
        "webdataset>=0.2.86",
        "pillow>=10",
        "tqdm>=4.60",
    ],
    extras_require={
        "dev": ["pytest>=8,<9", "pytest-benchmark>=5.1,<5.3", "ruff>=0.6", "playwright>=1.40"],
        "train": ["deepspeed>=0.15", "tensorboard>=2.14", "safetensors>=0.4", "matplotlib>=3.7"],
        "data": ["pybullet>=3.2", "h5py>=3.8", "imageio>=2.30"],
        "viz": ["imageio>=2.30", "imageio-ffmpeg>=0.4", "safetensors>=0.4", "pillow>=9"],
    },
    entry_points={"console_scripts": ["loci-fast=loci_fast.cli:main"]},
)
