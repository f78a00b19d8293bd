-- The Dockerfile: built and run only where `docker info` works (a daemon to
-- talk to), else pending with the reason. The container runs the sample app as
-- a user other than root, answers a WebSocket handshake on the published
-- port, and its health check turns healthy.
local server = require "server"
local proc = require "sbt_proc"
local rawws = require "rawws"

local SANITIZED = os.getenv("SB_SANITIZE") == "ON"

local function sh(cmd)
    local p = io.popen("unset LD_PRELOAD; { " .. cmd .. "; } 2>&1")
    local out = p:read("a")
    local ok = p:close()
    return ok, out
end

local function docker_problem()
    if SANITIZED then return "the image is built from the normal build's run (this is the ASan build)" end
    if not sh("command -v docker >/dev/null") then return "docker is not installed" end
    local ok, out = sh("timeout 20 docker info --format '{{.ServerVersion}}'")
    if not ok then
        return "docker info fails: " .. (out:match("[^\n]*[Dd]aemon[^\n]*") or out:match("[^\n]+") or "")
    end
end

describe("the Docker image", function()
    local problem = docker_problem()
    if problem then
        pending("not built: " .. problem)
        return
    end

    local tag = ("switchboard-spec:%d"):format(proc.getpid())
    local name = ("switchboard-spec-%d"):format(proc.getpid())

    setup(function()
        local ok, out = sh(("timeout 900 docker build -q -t %s '%s'"):format(tag, server.root))
        assert(ok, out)
    end)

    teardown(function()
        sh("docker rm -f " .. name .. " >/dev/null")
        sh("docker rmi -f " .. tag .. " >/dev/null")
    end)

    it("runs the sample app as a user other than root, answers a handshake, and turns healthy",
        function()
        local ok, out = sh(("docker run -d --name %s -p 127.0.0.1::8080 %s"):format(name, tag))
        assert(ok, out)
        local _, mapped = sh("docker port " .. name .. " 8080/tcp")
        local port = tonumber(mapped:match("127%.0%.0%.1:(%d+)"))
        assert(port, mapped)
        server.wait_for(function()
            local up, c = pcall(rawws.open, port, "/echo")
            if up then
                local echoed = c:echo("from the container")
                c:close()
                return echoed == "from the container"
            end
        end, 30, "the container to answer a handshake")
        local _, uid = sh("docker exec " .. name .. " id -u")
        assert.is_true(tonumber(uid) ~= nil and tonumber(uid) ~= 0, uid)
        -- the first check runs after --interval (10 s)
        server.wait_for(function()
            local _, health = sh("docker inspect --format '{{.State.Health.Status}}' " .. name)
            assert.falsy(health:find("unhealthy", 1, true), health)
            return health:find("healthy", 1, true)
        end, 60, "the health check to pass")
        ok, out = sh("docker stop -t 15 " .. name)
        assert(ok, out)
        local _, logs = sh("docker logs " .. name)
        assert.truthy(logs:find("shutdown complete", 1, true), logs)
    end)
end)
