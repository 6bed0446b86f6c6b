// Rendered by gpufleet's autoscaler: model -> pool, which pools serve, fallbacks.
export default {"activator": true, "auth": true, "fallback": {}, "generation": "3f1b7b70c13a5b2e", "keys": {}, "models": {}, "routes": {}, "rules": [], "serving": {}};
