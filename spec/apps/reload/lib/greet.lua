local words = require "words"
return {
    hello = function(name) return words.hello .. ", " .. name end,
}
