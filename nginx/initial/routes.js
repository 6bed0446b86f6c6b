// Rendered by gpufleet's autoscaler: model -> pool, which pools serve, fallbacks.
export default {"fallback": {}, "generation": "8f89cd89ab3567a4", "routes": {}, "serving": {}};
