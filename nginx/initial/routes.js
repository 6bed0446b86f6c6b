// Rendered by gpufleet's autoscaler: model -> pool, which pools serve, fallbacks.
export default {"activator": true, "auth": true, "fallback": {}, "generation": "78fb9f746c1b42db", "keys": {}, "models": {}, "routes": {}, "rules": [], "serving": {}};
