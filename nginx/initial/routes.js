// Rendered by gpufleet's autoscaler: model -> pool, which pools serve, fallbacks.
export default {"activator": true, "auth": true, "fallback": {}, "generation": "ee83b90040ba6c4e", "keys": {}, "models": {}, "routes": {}, "rules": [], "serving": {}};
