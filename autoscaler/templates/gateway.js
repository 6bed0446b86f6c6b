// gpufleet gateway: route OpenAI requests to a pool by the body's `model` field.
// routes.js is rendered by the autoscaler next to this file and re-read on reload.
import cfg from 'routes.js';
import crypto from 'crypto';
import fs from 'fs';

function own(obj, key) {
    // `model: "constructor"` must not find Object.prototype's members
    return Object.prototype.hasOwnProperty.call(obj, key) ? obj[key] : undefined;
}

function fail(r, status, message, type, param, code) {
    r.headersOut['Content-Type'] = 'application/json';
    if (status === 503) {
        r.headersOut['Retry-After'] = '2';
    }
    if (status === 429) {
        r.headersOut['Retry-After'] = '1';
    }
    if (status === 401) {
        r.headersOut['WWW-Authenticate'] = 'Bearer';
    }
    if (status === 405) {
        r.headersOut['Allow'] = 'POST';
    }
    r.return(status, JSON.stringify({error: {message: message, type: type, param: param, code: code}}));
}

// The key a request presents, as its entry in the keys table (by SHA-256 of the bearer token), or undefined.
function keyEntry(r) {
    var h = r.headersIn['Authorization'];
    if (!cfg.auth || typeof h !== 'string') {
        return undefined;
    }
    var m = /^Bearer[ \t]+([!-~]+)[ \t]*$/i.exec(h);
    if (!m) {
        return undefined;
    }
    return own(cfg.keys || {}, crypto.createHash('sha256').update(m[1]).digest('hex'));
}

// js_set $gf_key: the key's name (for the per-key limits and the access log; never the key itself).
function keyName(r) {
    var k = keyEntry(r);
    return k ? k.name : '';
}

// Auth on: the request's key entry, or a 401 sent (and null returned). Auth off: an entry allowing all.
function authorize(r) {
    if (!cfg.auth) {
        return {name: '', tier: '', models: ['*']};
    }
    var k = keyEntry(r);
    if (k) {
        return k;
    }
    var given = r.headersIn['Authorization'] !== undefined;
    fail(r, 401, given ? 'Incorrect API key provided.'
                       : 'You did not provide an API key. Send it in the header Authorization: Bearer <key>.',
         'invalid_request_error', null, given ? 'invalid_api_key' : 'missing_api_key');
    return null;
}

function allows(k, model) {
    return k.models.indexOf('*') >= 0 || k.models.indexOf(model) >= 0;
}

// The prompt's length in tokens, estimated from the body: characters / chars_per_token (a token id
// in a pre-tokenized prompt counts as one token).
function promptTokens(body) {
    var per = cfg.chars_per_token || 4;
    var chars = 0;
    function add(v, depth) {
        if (depth > 8) {
            return;
        }
        if (typeof v === 'string') {
            chars += v.length;
        } else if (typeof v === 'number') {
            chars += per;
        } else if (Array.isArray(v)) {
            for (var i = 0; i < v.length; i++) {
                add(v[i], depth + 1);
            }
        } else if (v !== null && typeof v === 'object') {
            if (typeof v.text === 'string') {
                chars += v.text.length;
            } else if (v.content !== undefined) {
                add(v.content, depth + 1);
            }
        }
    }
    add(body.prompt, 0);
    add(body.messages, 0);
    return Math.ceil(chars / per);
}

function ruleFor(r, key, model, body) {
    var rules = cfg.rules || [];
    var tokens = null;
    for (var i = 0; i < rules.length; i++) {
        var ru = rules[i];
        if (ru.models.length && ru.models.indexOf(model) < 0) {
            continue;
        }
        // a rule never gives a key a model it may not use (a header is the client's to set)
        if (!allows(key, own(cfg.models, ru.pool))) {
            continue;
        }
        if (ru.tiers.length && ru.tiers.indexOf(key.tier || '') < 0) {
            continue;
        }
        var ok = true;
        for (var h in ru.headers) {
            if (Object.prototype.hasOwnProperty.call(ru.headers, h) && r.headersIn[h] !== ru.headers[h]) {
                ok = false;
                break;
            }
        }
        if (!ok) {
            continue;
        }
        if (ru.over !== null || ru.under !== null) {
            if (tokens === null) {
                tokens = promptTokens(body);
            }
            if ((ru.over !== null && !(tokens > ru.over)) || (ru.under !== null && !(tokens < ru.under))) {
                continue;
            }
        }
        return ru;
    }
    return null;
}

// Pools the autoscaler marked saturated this tick (a file it rewrites every tick; no reload needed).
// Unreadable, garbage or stale (autoscaler gone): none.
function saturated() {
    if (!cfg.state_file) {
        return {};
    }
    try {
        var st = JSON.parse(fs.readFileSync(cfg.state_file, 'utf8'));
        if (typeof st.t !== 'number' || Date.now() / 1000 - st.t > (cfg.state_stale_s || 10)) {
            return {};
        }
        var out = {};
        for (var i = 0; i < st.saturated.length; i++) {
            out[st.saturated[i]] = true;
        }
        return out;
    } catch (e) {
        return {};
    }
}

// At most `cap` tokens: lower the limits the request gives, or set one where it gives none.
function capTokens(body, cap) {
    var limited = false;
    ['max_tokens', 'max_completion_tokens'].forEach(function (f) {
        if (typeof body[f] === 'number') {
            body[f] = Math.min(body[f], cap);
            limited = true;
        }
    });
    if (!limited) {
        body.max_tokens = cap;
    }
}

// Which pool of the chain (the chosen pool, then its fallbacks) serves: the index, -1 for none. First a pool
// that serves and is not saturated; else any that serves (an overloaded pool beats none). The same rule as
// autoscaler/gateway/routing.py pick_pool, which the simulator runs; tests/unit/test_routing_parity.py runs
// both on one table.
function pickPool(pools, serving, hot) {
    for (var pass = 0; pass < 2; pass++) {
        for (var i = 0; i < pools.length; i++) {
            if (own(serving, pools[i]) && (pass === 1 || !own(hot, pools[i]))) {
                return i;
            }
        }
    }
    return -1;
}

function route(r) {
    var key = authorize(r);
    if (key === null) {
        return;
    }
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
    if (pool === undefined || !(allows(key, model) || allows(key, own(cfg.models, pool)))) {
        // the same answer for a model this key may not use: it learns nothing of models it cannot reach
        return fail(r, 404, 'The model `' + model + '` does not exist or you do not have access to it.',
                    'invalid_request_error', 'model', 'model_not_found');
    }
    // a name fleet.yaml knows (a pool's model or an alias): safe as a metric label
    r.variables.gf_model = model;
    var rule = ruleFor(r, key, model, body);
    var chosen = rule ? rule.pool : pool;
    var why = rule ? 'rule:' + rule.name : (model === own(cfg.models, pool) ? 'model' : 'alias');
    // a fallback never gives a key a model it may not use: it waits for its own pool instead
    var chain = [{pool: chosen, max_tokens: null}].concat((own(cfg.fallback, chosen) || []).filter(function (f) {
        return allows(key, own(cfg.models, f.pool));
    }));
    var hot = chain.length > 1 ? saturated() : {};
    var pick = pickPool(chain.map(function (c) { return c.pool; }), cfg.serving, hot);
    var target = pick >= 0 ? chain[pick] : chain[0];
    if (pick > 0) {
        why = 'fallback:' + (own(cfg.serving, chosen) ? 'saturated' : 'no-replica') + ':' + chosen + ' ' + why;
    }
    var served = own(cfg.models, target.pool);
    var rewrite = served !== model;
    if (target.max_tokens) {
        capTokens(body, target.max_tokens);
        why += ' max_tokens<=' + target.max_tokens;
        rewrite = true;
    }
    r.variables.gf_route = 'pool=' + target.pool + '; reason=' + why;
    var b = '';
    if (rewrite) {
        // a replica answers only to its own model name; the answer's `model` says who served
        body.model = served;
        r.variables.gf_body = JSON.stringify(body);
        b = 'b';
    }
    if (pick >= 0) {
        return r.internalRedirect('/_pool' + b + '/' + target.pool.replace(/-/g, '_') + r.uri);
    }
    if (cfg.activator) {
        // No replica serves: the activator holds the request, wakes the pool and forwards it.
        return r.internalRedirect('/_activator' + b + '/' + target.pool + r.uri);
    }
    return fail(r, 503, 'No replica of model `' + model + '` is serving yet; retry shortly.',
                'service_unavailable', null, 'no_replica');
}

function models(r) {
    // on every answer, 401 too: the autoscaler's reload probe carries no API key
    r.headersOut['X-Gpufleet-Generation'] = cfg.generation || '';
    var key = authorize(r);
    if (key === null) {
        return;
    }
    var data = Object.keys(cfg.routes).filter(function (m) { return allows(key, m); }).map(function (m) {
        return {id: m, object: 'model', created: 0, owned_by: 'gpufleet'};
    });
    r.headersOut['Content-Type'] = 'application/json';
    r.return(200, JSON.stringify({object: 'list', data: data}));
}

// js_set $gf_generation: the config generation nginx serves, for the autoscaler's reload probe, which carries
// no API key: the 401 nginx answers it before any njs runs says it too
function generation(r) {
    return String(cfg.generation || '');
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
    429: ['Rate limit reached for requests; retry after a second.', 'requests', 'rate_limit_exceeded'],
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

export default {route, models, notFound, edgeError, keyName, generation, pickPool};
