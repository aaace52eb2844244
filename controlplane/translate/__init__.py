"""Pure translation of the mesh state into one proxy's Envoy resources."""

from controlplane.translate.options import TranslateOptions
from controlplane.translate.resources import ProxyConfig
from controlplane.translate.translator import translate

__all__ = ["ProxyConfig", "TranslateOptions", "translate"]
