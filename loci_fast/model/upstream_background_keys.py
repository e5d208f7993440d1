"""Key map from upstream's background Lightning checkpoint (``LociBackgroundModule``: ``net.*`` and
``context_loss.num_updates``) to :class:`loci_fast.model.background.BackgroundPretrainer` (§12, §17.4).

Our module tree follows upstream's names; only the wrappers that hold a single layer differ (upstream
wraps patch codecs with a Rearrange or a GradientScaler in an ``nn.Sequential``, and the uncertainty
U-Net sits at index 1 of a Sequential after the colour conversion).
"""
from __future__ import annotations

_WB12 = r"(?:weight|bias)[12]"
_PARTS = r"(?:base_encoder|rgb_encoder|depth_encoder|motion_encoder|depth_decoder|rgb_decoder)"

#: (pattern on the upstream key, our key as a re.Match.expand template); the first match wins
BACKGROUND_KEY_MAP: list[tuple[str, str]] = [
    (r"^net\.uncertainty_estimation\.1\.(.+)$", r"net.uncertainty_estimation.unet.\1"),
    (rf"^net\.(base_encoder\.0|motion_encoder|rgb_decoder)\.to_patches\.0\.({_WB12})$", r"net.\1.to_patches.\2"),
    (rf"^net\.rgb_decoder\.depth_embedding\.1\.({_WB12})$", r"net.rgb_decoder.depth_embedding.\1"),
    (r"^net\.rgb_decoder\.preprocess\.0\.(.+)$", r"net.rgb_decoder.preprocess.\1"),
    (rf"^net\.({_PARTS}\..+)$", r"net.\1"),
]
#: upstream's GestaltLoss counter on the depth context (a float; ours is an int64 count)
COUNTER_KEY = "context_loss.num_updates"
