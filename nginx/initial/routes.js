// Rendered by gpufleet's autoscaler: model -> pool, which pools serve, fallbacks.
export default {"fallback": {}, "routes": {}, "serving": {}};
