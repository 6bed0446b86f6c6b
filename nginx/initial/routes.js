// Rendered by gpufleet's autoscaler: model -> pool, which pools serve, fallbacks.
export default {"activator": true, "fallback": {}, "generation": "a53827fba93e5f27", "routes": {}, "serving": {}};
