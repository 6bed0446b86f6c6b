// gpufleet gateway: route OpenAI requests to a pool by the body's `model` field.
// routes.js is rendered by the autoscaler next to this file and re-read on reload.
import cfg from 'routes.js';

function own(obj, key) {
    // `model: "constructor"` must not find Object.prototype's members
    return Object.prototype.hasOwnProperty.call(obj, key) ? obj[key] : undefined;
}

function fail(r, status, message, type, param, code) {
    r.headersOut['Content-Type'] = 'application/json';
    if (status === 503) {
        r.headersOut['Retry-After'] = '2';
    }
    if (status === 405) {
        r.headersOut['Allow'] = 'POST';
    }
    r.return(status, JSON.stringify({error: {message: message, type: type, param: param, code: code}}));
}

function route(r) {
    if (r.method !== 'POST') {
        return fail(r, 405, 'Use POST for ' + r.uri + '.', 'invalid_request_error', null, 'method_not_allowed');
    }
    var text = r.requestText;
    if (text === undefined || text === null) {
        // Body larger than client_body_buffer_size went to a temp file.
        return fail(r, 413, 'Request body too large.', 'invalid_request_error', null, 'request_too_large');
    }
    var body;
    try {
        body = JSON.parse(text);
    } catch (e) {
        return fail(r, 400, 'Request body is not valid JSON.', 'invalid_request_error', null, null);
    }
    if (body === null || typeof body !== 'object' || Array.isArray(body)) {
        return fail(r, 400, 'Request body must be a JSON object.', 'invalid_request_error', null, null);
    }
    var model = body.model;
    if (typeof model !== 'string' || model.length === 0) {
        return fail(r, 400, "'model' is required and must be a string.", 'invalid_request_error', 'model', null);
    }
    var pool = own(cfg.routes, model);
    if (pool === undefined) {
        return fail(r, 404, 'The model `' + model + '` does not exist.', 'invalid_request_error', 'model',
                    'model_not_found');
    }
    var chain = [pool].concat(own(cfg.fallback, pool) || []);
    for (var i = 0; i < chain.length; i++) {
        if (own(cfg.serving, chain[i])) {
            return r.internalRedirect('/_pool/' + chain[i].replace(/-/g, '_') + r.uri);
        }
    }
    if (cfg.activator) {
        // No replica serves: the activator holds the request, wakes the pool and forwards it.
        return r.internalRedirect('/_activator/' + pool + r.uri);
    }
    return fail(r, 503, 'No replica of model `' + model + '` is serving yet; retry shortly.',
                'service_unavailable', null, 'no_replica');
}

function models(r) {
    var data = Object.keys(cfg.routes).map(function (m) {
        return {id: m, object: 'model', created: 0, owned_by: 'gpufleet'};
    });
    r.headersOut['Content-Type'] = 'application/json';
    r.headersOut['X-Gpufleet-Generation'] = cfg.generation || '';
    r.return(200, JSON.stringify({object: 'list', data: data}));
}

function notFound(r) {
    fail(r, 404, 'Unknown path ' + r.uri + '.', 'invalid_request_error', null, 'not_found');
}

var EDGE = {
    400: ['Bad request.', 'invalid_request_error', 'bad_request'],
    405: ['Method not allowed; use POST.', 'invalid_request_error', 'method_not_allowed'],
    408: ['Request not received in time.', 'invalid_request_error', 'request_timeout'],
    413: ['Request body too large.', 'invalid_request_error', 'request_too_large'],
    414: ['Request URI too long.', 'invalid_request_error', 'uri_too_long'],
    494: ['Request headers too large.', 'invalid_request_error', 'headers_too_large'],
    502: ['The replica serving this request went away; retry.', 'server_error', 'upstream_failed'],
    503: ['No replica is serving; retry shortly.', 'service_unavailable', 'no_replica'],
    504: ['The replica did not answer in time; retry.', 'server_error', 'upstream_timeout']
};

function edgeError(r) {
    var status = Number(r.variables.status) || 500;
    var e = EDGE[status] || ['Gateway error.', 'server_error', null];
    fail(r, status, e[0], e[1], null, e[2]);
}

export default {route, models, notFound, edgeError};
