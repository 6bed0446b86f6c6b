// Rendered by gpufleet's autoscaler: model -> pool, which pools serve, fallbacks.
export default {"activator": true, "auth": true, "fallback": {}, "generation": "5ec10c62f54eba1e", "keys": {}, "routes": {}, "serving": {}};
